"""Helpers for browser tests that drive the real supertokens-website SDK.

The browser is Debian's Chromium (``apt-get install -y chromium``), driven by
the ``playwright`` package from PyPI *without* ``playwright install``: we pass
``executable_path`` so Playwright never downloads a browser of its own.

The SDK is ``supertokens-website@4.2.0`` from npm, bundled by
``demo/frontend/build.sh`` into ``demo/static/supertokens.js`` (an IIFE that
sets ``window.supertokens`` and ``window.supertokensModule``). The bundle is a
build product, not committed: :func:`ensure_sdk_bundle` builds it on demand.

Typical use in a test module::

    import pytest
    from tests.browser_support import chromium_available, launch_browser, ensure_sdk_bundle

    pytestmark = pytest.mark.skipif(not chromium_available(), reason="no chromium/playwright")

    def test_something():
        bundle = ensure_sdk_bundle()          # serve bundle.parent as /static
        from playwright.sync_api import sync_playwright
        with sync_playwright() as p:
            browser = launch_browser(p)
            try:
                page = browser.new_page()
                ...
            finally:
                browser.close()

Nothing here is a test; pytest collects no tests from this module.
"""

from __future__ import annotations

import fcntl
import os
import pathlib
import shutil
import subprocess
from typing import Any

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
FRONTEND_DIR = REPO_ROOT / "demo" / "frontend"
STATIC_DIR = REPO_ROOT / "demo" / "static"
SDK_BUNDLE = STATIC_DIR / "supertokens.js"
BUILD_SCRIPT = FRONTEND_DIR / "build.sh"

#: Path of the Chromium binary; ``CHROMIUM_PATH`` in the environment overrides it.
CHROMIUM_PATH = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")

#: Flags every test browser is launched with (headless, no sandbox since we
#: run as root, and no background traffic to anything but the page's server).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Files whose change makes an existing bundle stale.
_BUNDLE_INPUTS = ("package.json", "package-lock.json", "entry.js", "process-shim.js", "build.sh")


def chromium_available() -> bool:
    """Return True when a browser test can run here.

    That needs the Chromium binary at :data:`CHROMIUM_PATH` (executable) and
    the ``playwright`` Python package importable. It does not start a browser
    and does not check for node/npm (see :func:`sdk_bundle_buildable`).
    """
    if not (os.path.isfile(CHROMIUM_PATH) and os.access(CHROMIUM_PATH, os.X_OK)):
        return False
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True


def sdk_bundle_buildable() -> bool:
    """Return True when the SDK bundle exists or ``node`` and ``npm`` can build it."""
    if SDK_BUNDLE.is_file() and not _bundle_stale():
        return True
    return shutil.which("node") is not None and shutil.which("npm") is not None


def launch_browser(playwright: Any, **kwargs: Any) -> Any:
    """Launch Debian's Chromium through a Playwright instance.

    ``playwright`` is what ``sync_playwright()`` (or ``async_playwright()``)
    yields. With the sync API this returns a ``Browser``; with the async API it
    returns an awaitable of one (``browser = await launch_browser(p)``).
    Extra keyword arguments go to ``playwright.chromium.launch`` (for example
    ``slow_mo`` or ``timeout``); ``args`` given there are appended to
    :data:`CHROMIUM_ARGS`. The caller closes the browser.
    """
    extra_args = list(kwargs.pop("args", []))
    kwargs.setdefault("headless", True)
    return playwright.chromium.launch(
        executable_path=CHROMIUM_PATH,
        args=CHROMIUM_ARGS + extra_args,
        **kwargs,
    )


def _bundle_stale() -> bool:
    if not SDK_BUNDLE.is_file():
        return True
    built = SDK_BUNDLE.stat().st_mtime
    for name in _BUNDLE_INPUTS:
        src = FRONTEND_DIR / name
        if src.is_file() and src.stat().st_mtime > built:
            return True
    return False


def ensure_sdk_bundle(force: bool = False, timeout: float = 600.0) -> pathlib.Path:
    """Return the path of ``demo/static/supertokens.js``, building it if needed.

    It is (re)built by ``bash demo/frontend/build.sh`` (``npm ci`` from the
    npm registry, then esbuild) when it is missing, older than one of its
    inputs (package.json, package-lock.json, entry.js, process-shim.js,
    build.sh) or ``force`` is true. A file lock serialises concurrent callers
    (e.g. pytest-xdist workers). Raises ``RuntimeError`` with the build output
    if the build fails. A fresh build takes about a second plus the npm
    download.
    """
    lock_path = FRONTEND_DIR / ".build.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if force or _bundle_stale():
                proc = subprocess.run(
                    ["bash", str(BUILD_SCRIPT)],
                    cwd=str(FRONTEND_DIR),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    timeout=timeout,
                )
                if proc.returncode != 0 or not SDK_BUNDLE.is_file():
                    raise RuntimeError(
                        f"building the supertokens-website bundle failed "
                        f"(exit {proc.returncode}):\n{proc.stdout}"
                    )
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return SDK_BUNDLE


# -- running an IOLoop in a background thread ------------------------------------


class LoopThread:
    """Runs an asyncio/Tornado loop in a daemon thread while the test drives a browser.

    Playwright's sync API blocks the test's thread (and keeps its own asyncio
    loop marked as running there, so no other loop can run in that thread
    while a browser is open): the server under test is served from here::

        loop = LoopThread().start()
        st = loop.run(SuperTokens.create(config))   # runs on the loop's thread
        loop.run(lambda: app.listen(0))              # plain callables too
        ...
        loop.run(st.close()); loop.stop()

    Anything made on this loop (pools, servers) must be used and closed on it.
    """

    def __init__(self) -> None:
        import threading

        self.io_loop: Any = None
        self._thread = threading.Thread(target=self._main, name="test-ioloop", daemon=True)
        self._started = threading.Event()

    def _main(self) -> None:
        import asyncio

        import tornado.ioloop

        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self.io_loop = tornado.ioloop.IOLoop.current()
        self.io_loop.add_callback(self._started.set)
        try:
            self.io_loop.start()
        finally:
            self.io_loop.close(all_fds=True)

    def start(self) -> LoopThread:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the IOLoop thread did not start")
        return self

    def run(self, awaitable: Any, timeout: float = 30.0) -> Any:
        """Run a coroutine, or call a plain function, on the loop; return its result."""
        import asyncio
        import inspect

        async def wrapper() -> Any:
            value = awaitable() if callable(awaitable) else awaitable
            if inspect.isawaitable(value):
                value = await value
            return value

        future = asyncio.run_coroutine_threadsafe(wrapper(), self.io_loop.asyncio_loop)
        return future.result(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        if not self._thread.is_alive():
            return
        self.io_loop.add_callback(self.io_loop.stop)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError("the IOLoop thread did not stop")


def free_port() -> int:
    """A TCP port that was free on localhost a moment ago."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
