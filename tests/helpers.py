"""Test helpers: pool wrappers (counting, or any hook at an await point), raw database access."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import aiopg

from tornado_supertokens.clock import SystemClock

DAY_MS = 24 * 3_600_000


class MidIntervalClock:
    """The wall clock, shifted so that a test starts half-way through a key interval.

    Time still moves, but no key is due (nor made ahead) for hours: tests that
    count statements stay exact whatever the hour they run at.
    """

    def __init__(self, interval_ms: int = DAY_MS) -> None:
        now = SystemClock().now_ms()
        self._shift = (now - now % interval_ms + interval_ms // 2) - now

    def now_ms(self) -> int:
        return SystemClock().now_ms() + self._shift


class WrappedPool:
    """An aiopg pool seen through hooks at each await point of the library's use of
    it: acquire, cursor, execute, fetch, release. Subclasses override the hooks
    to count statements, inject faults or cancellations, or hold transactions.
    Everything else passes through to the real pool."""

    def __init__(self, pool: aiopg.Pool) -> None:
        self._pool = pool

    def acquire(self) -> Acquisition:
        return Acquisition(self)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    # -- hooks --

    def before_acquire(self) -> None:
        """May raise (a refused connection)."""

    def before_cursor(self) -> None:
        pass

    async def execute(self, acq: Acquisition, cur: Any, operation: Any, parameters: Any) -> Any:
        return await cur.execute(operation, parameters)

    def before_fetch(self) -> None:
        pass

    async def before_release(self, acq: Acquisition, exc: Any) -> None:
        pass


class Acquisition:
    """One ``async with pool.acquire()``: the real connection is ``raw``."""

    def __init__(self, owner: WrappedPool) -> None:
        self.owner = owner
        self.raw: Any = None
        self.holding = False  # free for hooks to use
        self._cm: Any = None

    async def __aenter__(self) -> _Conn:
        self.owner.before_acquire()
        self._cm = self.owner._pool.acquire()
        self.raw = await self._cm.__aenter__()
        return _Conn(self)

    async def __aexit__(self, *exc: Any) -> Any:
        await self.owner.before_release(self, exc)
        return await self._cm.__aexit__(*exc)


class _Conn:
    def __init__(self, acq: Acquisition) -> None:
        self._acq = acq

    def cursor(self) -> _CursorCM:
        return _CursorCM(self._acq.raw.cursor(), self._acq)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._acq.raw, name)


class _CursorCM:
    def __init__(self, cm: Any, acq: Acquisition) -> None:
        self._cm = cm
        self._acq = acq

    async def __aenter__(self) -> _Cursor:
        self._acq.owner.before_cursor()
        return _Cursor(await self._cm.__aenter__(), self._acq)

    async def __aexit__(self, *exc: Any) -> Any:
        return await self._cm.__aexit__(*exc)


class _Cursor:
    def __init__(self, cur: Any, acq: Acquisition) -> None:
        self._cur = cur
        self._acq = acq

    async def execute(self, operation: Any, parameters: Any = None) -> Any:
        return await self._acq.owner.execute(self._acq, self._cur, operation, parameters)

    async def fetchall(self) -> Any:
        self._acq.owner.before_fetch()
        return await self._cur.fetchall()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cur, name)


class CountingPool(WrappedPool):
    """Counts every statement executed through it."""

    def __init__(self, pool: aiopg.Pool) -> None:
        super().__init__(pool)
        self.statements: list[str] = []

    @property
    def count(self) -> int:
        return len(self.statements)

    def reset(self) -> None:
        self.statements.clear()

    async def execute(self, acq: Acquisition, cur: Any, operation: Any, parameters: Any) -> Any:
        self.statements.append(str(operation))
        return await cur.execute(operation, parameters)


def query(pg_params: dict, sql: str, params: Any = None) -> list[tuple]:
    """Run one statement on a fresh autocommit connection; its rows (if any)."""
    from tornado_supertokens.testing import connect

    conn = connect(pg_params)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall()) if cur.description else []
    finally:
        conn.close()


def drop_tables(pg_params: dict, *names: str) -> None:
    from tornado_supertokens.testing import connect

    conn = connect(pg_params)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            for name in names:
                cur.execute(f'DROP TABLE IF EXISTS "{name}"')
    finally:
        conn.close()


def run_at_a_barrier(
    argv: Sequence[str], n: int, *, cwd: Path, env: Optional[dict] = None, timeout: float = 60
) -> list[Any]:
    """Run ``n`` copies of ``argv + [barrier_dir, n]`` (they meet at the barrier
    directory so that they really start together); each must exit 0 and print a
    JSON document on its last line: those, in order."""
    with tempfile.TemporaryDirectory() as barrier:
        procs = [
            subprocess.Popen([sys.executable, *argv, barrier, str(n)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=str(cwd), env=env)
            for _ in range(n)
        ]
        outputs = []
        try:
            for proc in procs:
                out, err = proc.communicate(timeout=timeout)  # hang guard
                assert proc.returncode == 0, err
                outputs.append(json.loads(out.strip().splitlines()[-1]))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    return outputs


async def make_pool(pg_params: dict, maxsize: int = 10) -> aiopg.Pool:
    kw = dict(pg_params)
    kw["dbname"] = kw.pop("database")
    return await aiopg.create_pool(minsize=1, maxsize=maxsize, **kw)


class CookieJar:
    """Just enough of a browser's cookie jar for HTTP-level tests (paths, expiry)."""

    def __init__(self) -> None:
        self.cookies: dict[tuple[str, str], str] = {}  # (name, path) -> value

    def update(self, response: Any) -> None:
        from http.cookies import SimpleCookie

        for header in response.headers.get_list("Set-Cookie"):
            parsed: SimpleCookie = SimpleCookie()
            parsed.load(header)
            for name, morsel in parsed.items():
                key = (name, morsel["path"] or "/")
                if not morsel.value or _expired(morsel["expires"]):
                    self.cookies.pop(key, None)
                else:
                    self.cookies[key] = morsel.value

    def header(self, path: str = "/") -> str:
        pairs = [
            f"{name}={value}"
            for (name, cpath), value in sorted(self.cookies.items(), key=lambda kv: -len(kv[0][1]))
            if path == cpath or path.startswith(cpath.rstrip("/") + "/") or cpath == "/"
        ]
        return "; ".join(pairs)

    def get(self, name: str) -> Any:
        for (cname, _), value in self.cookies.items():
            if cname == name:
                return value
        return None


def _expired(expires: str) -> bool:
    import datetime
    from email.utils import parsedate_to_datetime

    if not expires:
        return False
    return parsedate_to_datetime(expires) <= datetime.datetime.now(datetime.timezone.utc)


def set_cookie_headers(response: Any) -> dict[str, dict[str, Any]]:
    """Parse every Set-Cookie header: name -> {value, and each attribute}."""
    out: dict[str, dict[str, Any]] = {}
    for header in response.headers.get_list("Set-Cookie"):
        parts = [p.strip() for p in header.split(";")]
        name, _, value = parts[0].partition("=")
        attrs: dict[str, Any] = {"value": value}
        for part in parts[1:]:
            key, sep, val = part.partition("=")
            attrs[key.lower()] = val if sep else True
        out[name] = attrs
    return out
