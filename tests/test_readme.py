"""The README's five-minute example runs as written."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlencode

import pytest
from tornado.httpclient import AsyncHTTPClient

import pg
from helpers import CookieJar

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Five minutes with Tornado", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "no python example in the README"
    return match.group(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def fresh_database(pg_params):
    name = f"ts_readme_{uuid.uuid4().hex[:10]}"
    admin = pg.connect(pg_params)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    yield name
    with admin.cursor() as cur:
        cur.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
    admin.close()


@pytest.fixture
def example_server(tmp_path, pg_params, fresh_database):
    script = tmp_path / "example.py"
    script.write_text(readme_example(), encoding="utf-8")
    port = free_port()
    env = dict(os.environ, PGHOST=str(pg_params["host"]), PGPORT=str(pg_params["port"]),
               PGDATABASE=fresh_database, PORT=str(port),
               PYTHONPATH=os.pathsep.join(filter(None, [str(README.parent),
                                                        os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([sys.executable, str(script)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"example exited: {proc.stdout.read().decode()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise AssertionError("example did not start listening")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


@pytest.mark.gen_test
async def test_readme_example_login_me_refresh_logout(example_server):
    http = AsyncHTTPClient()
    jar = CookieJar()

    async def call(method, path, body=None, headers=None):
        h = {"Cookie": jar.header(path), **(headers or {})}
        r = await http.fetch(example_server + path, method=method, headers=h,
                             body=body if method != "GET" else None, raise_error=False)
        jar.update(r)
        return r

    r = await call("POST", "/api/login", urlencode({"user": "ada"}))
    assert r.code == 200
    anti_csrf = r.headers["anti-csrf"]
    r = await call("GET", "/api/me")
    assert r.code == 200
    assert json.loads(r.body) == {"user": "ada", "payload": {"name": "ada"}}
    r = await call("POST", "/api/refresh", b"")
    assert r.code == 200
    anti_csrf = r.headers["anti-csrf"]
    assert (await call("GET", "/api/me")).code == 200
    r = await call("POST", "/api/logout", b"", {"anti-csrf": anti_csrf})
    assert r.code == 200
    assert r.headers["id-refresh-token"] == "remove"
    assert (await call("GET", "/api/me")).code == 440
