"""One "server process" for tests/test_rotation_processes.py (run as a script).

It runs a SuperTokens instance on the tables of the config given in argv[1],
with a :class:`ManualClock` that only the parent moves, and a statement-counting
pool. It reads one JSON command per line on stdin and answers one JSON line
on stdout:

- ``{"op": "clock", "now": ms}``: set the clock.
- ``{"op": "create", "n": N}``: N sessions created concurrently.
- ``{"op": "refresh", "tokens": [refresh token, ...]}``: each refreshed, then
  its new access token used once here (the promotion), concurrently.
- ``{"op": "verify", "tokens": [{"access": ..., "anti_csrf": ...}, ...]}``:
  verify each; statements issued while verifying are counted.
- ``{"op": "state"}``; ``{"op": "quit"}``.

Issued tokens are answered as ``{"access", "anti_csrf", "refresh", "kid"}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tornado_supertokens import TryRefreshTokenError  # noqa: E402
from tornado_supertokens.clock import ManualClock  # noqa: E402
from tornado_supertokens.supertokens import SuperTokens  # noqa: E402
from tornado_supertokens.tokens import access_token_kid  # noqa: E402

from helpers import CountingPool, make_pool  # noqa: E402


def issued(access: Any, anti_csrf: Any, refresh: Any) -> dict:
    return {
        "access": access.value,
        "anti_csrf": anti_csrf,
        "refresh": refresh.value if refresh is not None else None,
        "kid": access_token_kid(access.value),
    }


class Worker:
    def __init__(self, st: SuperTokens, pool: CountingPool, clock: ManualClock) -> None:
        self.st, self.pool, self.clock = st, pool, clock

    async def create(self, n: int) -> dict:
        self.pool.reset()
        results = await asyncio.gather(
            *(self.st.engine.create_new_session(f"user-{i}", {"n": i}) for i in range(n))
        )
        tokens = [issued(r.tokens.access_token, r.tokens.anti_csrf_token, r.tokens.refresh_token)
                  for r in results]
        return {"tokens": tokens, "statements": self.pool.count,
                "statements_text": list(self.pool.statements)}

    async def refresh(self, refresh_tokens: list[str]) -> dict:
        async def one(token: str) -> dict:
            child = await self.st.engine.refresh_session(token)
            promoted = await self.st.engine.get_session(
                child.tokens.access_token.value, child.tokens.anti_csrf_token, True
            )
            assert promoted.tokens.access_token is not None
            return issued(promoted.tokens.access_token, child.tokens.anti_csrf_token,
                          child.tokens.refresh_token)

        self.pool.reset()
        tokens = await asyncio.gather(*(one(t) for t in refresh_tokens))
        return {"tokens": list(tokens), "statements": self.pool.count,
                "statements_text": list(self.pool.statements)}

    async def verify(self, tokens: list[dict]) -> dict:
        ok, try_refresh, other = 0, [], []
        self.pool.reset()
        for i, token in enumerate(tokens):
            try:
                result = await self.st.engine.get_session(token["access"], token["anti_csrf"], True)
                assert result.tokens.access_token is None  # nothing to promote
                ok += 1
            except TryRefreshTokenError as exc:
                try_refresh.append([i, token["kid"], str(exc)])
            except Exception as exc:  # reported to the parent, which fails the test
                other.append([i, token["kid"], f"{type(exc).__name__}: {exc}"])
        return {"ok": ok, "try_refresh": try_refresh, "other": other,
                "statements": self.pool.count, "statements_text": list(self.pool.statements)}

    def state(self) -> dict:
        return {"known_kids": sorted(self.st.keys.known_kids),
                "current_kid": self.st.keys._current_kid}

    async def handle(self, cmd: dict) -> dict:
        op = cmd["op"]
        if op == "clock":
            self.clock.set(cmd["now"])
            return {}
        if op == "create":
            return await self.create(cmd["n"])
        if op == "refresh":
            return await self.refresh(cmd["tokens"])
        if op == "verify":
            return await self.verify(cmd["tokens"])
        if op == "state":
            return self.state()
        raise ValueError(f"unknown op {op!r}")


async def main() -> None:
    config, now = json.loads(sys.argv[1]), int(sys.argv[2])
    clock = ManualClock(now)
    params = {k: v for k, v in config["postgres"].items() if k != "tables"}
    pool = CountingPool(await make_pool(params))
    st = await SuperTokens.create(config, pool=pool, clock=clock, start_cleanup=False)
    worker = Worker(st, pool, clock)
    loop = asyncio.get_running_loop()
    print(json.dumps({"ready": True, **worker.state()}), flush=True)
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            cmd = json.loads(line)
            if cmd["op"] == "quit":
                print(json.dumps({}), flush=True)
                break
            try:
                answer = await worker.handle(cmd)
            except Exception:
                answer = {"error": traceback.format_exc()}
            print(json.dumps(answer), flush=True)
    finally:
        await st.close()
        pool.close()
        await pool.wait_closed()


if __name__ == "__main__":
    asyncio.run(main())
