"""In-process figures: ``python -m bench.worker`` (spec in $BENCH_WORKER).

Tasks:

- ``refresh``: ``SessionEngine.refresh_session`` at concurrency N, each
  worker holding its own session and presenting its latest refresh token,
  against a raw aiopg loop running the same single ``UPDATE ... RETURNING``
  (the library's own rendered ``rotate`` statement) at the same concurrency,
  on the same pool and table.
- ``micro``: access token sign / verify (engine path, no database) / cached
  verify, refresh token encrypt / decrypt, against PyJWT's encode / decode of
  the same claims.
- ``pools``: for each pool size, 32 concurrent refreshes (distinct sessions,
  then the same token 32 times at once) must complete within a time limit.
- ``cleanup``: 1M expired + 100k live rows bulk-inserted into a private
  table pair, then ``CleanupJob.run()`` while a 5 ms timer measures the
  longest IOLoop stall.

Prints one JSON document on its last line.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from dataclasses import replace
from typing import Any, Awaitable, Callable

import jwt

from tornado_supertokens import GeneralError, SuperTokensError
from tornado_supertokens import tokens as tk
from tornado_supertokens.supertokens import SuperTokens

from . import pgutil
from .common import JWT_PAYLOAD, SESSION_INFO, USER_ID, percentile, system_cpu

ROTATE_FALLBACK = (
    'UPDATE "{s}" SET refresh_token_hash_2 = %(new_h2)s, expires_at = %(expires_at)s'
    " WHERE session_handle = %(handle)s AND user_id = %(user_id)s"
    " AND refresh_token_hash_2 IN (%(new_h2)s, %(parent_h2)s)"
    " AND expires_at > %(now)s"
    " RETURNING jwt_user_payload"
)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- refresh in process ----------------------------------------------------------


def rotate_statement(instance: SuperTokens, table: str) -> str:
    """The library's own rendered rotate statement (fallback: a copy of it)."""
    rendered = getattr(instance.storage, "_rendered", None)
    if isinstance(rendered, dict) and "rotate" in rendered:
        return rendered["rotate"]
    return ROTATE_FALLBACK.format(s=table)


async def timed_loops(
    concurrency: int, duration: float, step: Callable[[int], Awaitable[bool]]
) -> dict:
    """Run ``step(i)`` in ``concurrency`` loops for ``duration`` seconds."""
    latencies: list[int] = []
    counts = {"ok": 0, "failed": 0}
    errors: dict[str, int] = {}
    stop_at = [0.0]
    perf = time.perf_counter_ns

    async def loop(i: int) -> None:
        while time.perf_counter() < stop_at[0]:
            t = perf()
            try:
                good = await step(i)
            except SuperTokensError as exc:
                good = False
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            latencies.append(perf() - t)
            counts["ok" if good else "failed"] += 1

    cpu0 = time.process_time()
    sys0, _ = system_cpu()
    t0 = time.perf_counter()
    stop_at[0] = t0 + duration
    await asyncio.gather(*(loop(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    sys1, _ = system_cpu()
    lat = sorted(latencies)
    n = counts["ok"] + counts["failed"]
    return {
        "requests": n,
        "failed": counts["failed"],
        "errors": errors,
        "elapsed_s": elapsed,
        "rps": n / elapsed,
        "p50_ms": percentile(lat, 50) / 1e6,
        "p99_ms": percentile(lat, 99) / 1e6,
        "cpu_us_per_req": cpu / n * 1e6 if n else float("nan"),
        "other_cpu_cores": max(0.0, (sys1 - sys0) - cpu) / elapsed,
    }


async def task_refresh(spec: dict) -> dict:
    conc = spec["concurrency"]
    instance = await SuperTokens.create(spec["config"], start_cleanup=False)
    try:
        engine = instance.engine
        table = spec["config"]["postgres"]["tables"]["refreshTokens"]
        # Engine side: one session per loop, always the latest refresh token.
        latest: list[str] = []
        for i in range(conc):
            r = await engine.create_new_session(f"bench-ip-{i}", JWT_PAYLOAD, SESSION_INFO)
            latest.append(r.tokens.refresh_token.value)

        async def engine_step(i: int) -> bool:
            try:
                r = await engine.refresh_session(latest[i])
            except SuperTokensError:
                # Start over so the loop goes on; the failure is counted.
                fresh = await engine.create_new_session(f"bench-ip-{i}", JWT_PAYLOAD)
                latest[i] = fresh.tokens.refresh_token.value
                raise
            latest[i] = r.tokens.refresh_token.value
            return True

        # Raw side: the library's own rotate statement, on sessions of the same
        # table, through the same pool; its parameters are captured from real
        # engine refreshes, then replayed with a fresh hash each time (stored
        # hash as the parent, a new random one as the presented token's).
        pool = instance.storage.pool
        stmt = rotate_statement(instance, table)
        raw_params = [await captured_rotate(instance, f"bench-raw-{i}") for i in range(conc)]

        async def raw_step(i: int) -> bool:
            params, own_key, parent_key = raw_params[i]
            new: Any = os.urandom(32).hex()
            if isinstance(params[own_key], (list, tuple)):
                new = [new]
            call = dict(params)
            call[own_key], call[parent_key] = new, params[own_key]
            async with pool.acquire() as conn:
                async with conn.cursor() as cur:
                    await cur.execute(stmt, call)
                    rows = await cur.fetchall()
            if rows:
                params[own_key] = new
                return True
            return False

        steps = {"engine": engine_step, "raw": raw_step}
        # Warm-up: open the pool's connections and fill caches for both sides.
        for name in spec["order"]:
            await timed_loops(conc, spec.get("warmup", 0.5), steps[name])
        out: dict[str, Any] = {"statement": stmt,
                               "raw_params": sorted(raw_params[0][0]) if raw_params else []}
        for name in spec["order"]:
            out[name] = await timed_loops(conc, spec["duration"], steps[name])
        return out
    finally:
        await instance.close()


async def captured_rotate(instance: SuperTokens, user: str) -> tuple[dict, str, str]:
    """The parameters of the rotate statement of a real refresh of a child token.

    Returns ``(params, own_key, parent_key)``: the keys under which the
    presented token's stored-form hash and its parent's are passed (found by
    value, so this survives renamed parameters). After the call the stored
    hash is ``params[own_key]``.
    """
    engine, storage = instance.engine, instance.storage
    seen: list[tuple[str, Any]] = []
    original = storage._execute

    async def spy(name: str, params: Any = None) -> Any:
        seen.append((name, params))
        return await original(name, params)

    first = await engine.create_new_session(user, JWT_PAYLOAD, SESSION_INFO)
    token = first.tokens.refresh_token.value
    child = (await engine.refresh_session(token)).tokens.refresh_token.value
    storage._execute = spy  # type: ignore[method-assign]
    try:
        await engine.refresh_session(child)
    finally:
        del storage._execute
    own = tk.sha256_hex(tk.sha256_hex(child))
    parent = tk.sha256_hex(tk.sha256_hex(token))
    def holds(value: Any, wanted: str) -> bool:
        # A plain parameter, or a one-element array (statements shared by
        # concurrent requests take arrays).
        return value == wanted or (isinstance(value, (list, tuple)) and list(value) == [wanted])

    for name, params in seen:
        if name == "rotate" and isinstance(params, dict):
            own_keys = [k for k, v in params.items() if holds(v, own)]
            parent_keys = [k for k, v in params.items() if holds(v, parent)]
            if len(own_keys) == 1 and len(parent_keys) == 1:
                return dict(params), own_keys[0], parent_keys[0]
    raise RuntimeError(f"cannot find the rotate statement's hash parameters in {seen!r}")


# -- micro-benchmarks --------------------------------------------------------------


def per_op_us(fn: Callable[[], Any], seconds: float, repeats: int = 3) -> float:
    """Microseconds per call: the best of ``repeats`` timed loops of about ``seconds`` each."""
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t0
        if dt >= seconds / 5:
            break
        n *= 4
    reps = max(1, int(n * seconds / max(dt, 1e-9)))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t0) / reps * 1e6)
    return best


async def per_op_us_async(fn: Callable[[int], Awaitable[Any]], count: int, repeats: int = 3) -> float:
    """Best of ``repeats`` passes over ``fn(0) .. fn(count - 1)``, in us per call."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(count):
            await fn(i)
        best = min(best, (time.perf_counter() - t0) / count * 1e6)
    return best


def cache_attributes(engine: Any) -> list[str]:
    """Names on the engine that look like a verified-token cache (hasattr-style detection)."""
    return sorted(n for n in dir(engine) if "cache" in n.lower() and not n.startswith("__"))


async def task_micro(spec: dict) -> dict:
    seconds = spec["seconds"]
    instance = await SuperTokens.create(spec["config"], start_cleanup=False)
    try:
        engine = instance.engine
        kid, key = await instance.keys.signing_key()
        key_b = tk.key_bytes(key)
        refresh_key = instance.keys.refresh_key
        now = now_ms()
        # Payloads taken from real tokens (whatever fields the library's
        # dataclasses have): a fresh session's access token, and a refresh
        # token that names a parent.
        created = await engine.create_new_session(USER_ID, JWT_PAYLOAD, SESSION_INFO)
        first = created.tokens.access_token.value
        payload = tk.decode_access_token(first, key, now)
        child = await engine.refresh_session(created.tokens.refresh_token.value)
        rtoken = child.tokens.refresh_token.value
        rpayload = tk.decrypt_refresh_token(rtoken, refresh_key)
        token = tk.encode_access_token(payload, key, kid)
        claims = jwt.decode(token, key_b, algorithms=["HS256"])  # the very same claims
        headers = {"kid": kid} if kid is not None else None
        out: dict[str, Any] = {"token_bytes": len(token)}

        out["pyjwt_encode"] = per_op_us(
            lambda: jwt.encode(claims, key_b, algorithm="HS256", headers=headers), seconds)
        out["pyjwt_decode"] = per_op_us(
            lambda: jwt.decode(token, key_b, algorithms=["HS256"], options={"require": ["exp"]}),
            seconds)
        out["access_sign"] = per_op_us(lambda: tk.encode_access_token(payload, key, kid), seconds)
        out["access_decode_fn"] = per_op_us(lambda: tk.decode_access_token(token, key, now), seconds)

        # Engine verify, every token new to the process (a cache miss if there is a cache).
        count = max(200, int(seconds / 200e-6))
        passes = 3
        distinct = [
            tk.encode_access_token(replace(payload, session_handle=str(uuid.uuid4())), key, kid)
            for _ in range(count * passes)
        ]
        out["verify_engine"] = min([
            await per_op_us_async(
                lambda i, p=p: engine.get_session(distinct[p * count + i], None, False), count, 1)
            for p in range(passes)
        ])
        # The same token again and again (a hit if there is a cache).
        await engine.get_session(token, None, False)
        cached_count = max(1000, count * 4)
        out["verify_engine_repeat"] = await per_op_us_async(
            lambda i: engine.get_session(token, None, False), cached_count)
        out["cache_attributes"] = cache_attributes(engine)

        out["refresh_encrypt"] = per_op_us(lambda: tk.encrypt_refresh_token(rpayload, refresh_key),
                                           seconds)
        out["refresh_decrypt"] = per_op_us(lambda: tk.decrypt_refresh_token(rtoken, refresh_key),
                                           seconds)
        return out
    finally:
        await instance.close()


# -- pool sizes ----------------------------------------------------------------------


async def task_pools(spec: dict) -> dict:
    results = []
    for size in spec["sizes"]:
        config = json.loads(json.dumps(spec["config"]))
        config["postgres"]["connectionLimit"] = size
        results.append(await one_pool(config, size, spec))
    return {"pools": results}


async def one_pool(config: dict, size: int, spec: dict) -> dict:
    conc, rounds, limit = spec["concurrency"], spec["refreshes"], spec["timeout"]
    outcome: dict[str, Any] = {"pool": size, "concurrency": conc, "ok": False}
    t0 = time.perf_counter()
    instance = await SuperTokens.create(config, start_cleanup=False)
    engine = instance.engine
    errors: dict[str, int] = {}
    done = {"refreshes": 0, "same_token": 0}
    same_outcomes: dict[str, int] = {}

    def note(exc: BaseException) -> None:
        errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1

    async def scenario() -> None:
        created = await asyncio.gather(
            *(engine.create_new_session(f"bench-pool-{size}-{i}", JWT_PAYLOAD) for i in range(conc))
        )

        async def chain(i: int) -> None:
            token = created[i].tokens.refresh_token.value
            for _ in range(rounds):
                try:
                    token = (await engine.refresh_session(token)).tokens.refresh_token.value
                    done["refreshes"] += 1
                except SuperTokensError as exc:
                    note(exc)
                    return

        await asyncio.gather(*(chain(i) for i in range(conc)))

        # The same (current) refresh token presented 32 times at once (tabs racing).
        fresh = await engine.create_new_session(f"bench-pool-{size}-same", JWT_PAYLOAD)
        token = fresh.tokens.refresh_token.value

        async def same(_: int) -> None:
            try:
                await engine.refresh_session(token)
                done["same_token"] += 1
            except GeneralError as exc:  # storage trouble: a failure
                note(exc)
            except SuperTokensError as exc:  # a verdict on the race: reported, not a failure
                same_outcomes[type(exc).__name__] = same_outcomes.get(type(exc).__name__, 0) + 1

        await asyncio.gather(*(same(i) for i in range(conc)))

    try:
        await asyncio.wait_for(scenario(), timeout=limit)
        outcome["ok"] = not errors and done["refreshes"] == conc * rounds
        outcome["result"] = "completed"
    except asyncio.TimeoutError:
        outcome["result"] = f"TIMEOUT after {limit}s (deadlock?)"
    except Exception as exc:
        outcome["result"] = f"error: {type(exc).__name__}: {exc}"
    finally:
        await instance.close()
    outcome.update(
        elapsed_s=time.perf_counter() - t0,
        refreshes=done["refreshes"],
        expected_refreshes=conc * rounds,
        same_token_ok=done["same_token"],
        same_token_other=same_outcomes,
        errors=errors,
    )
    return outcome


# -- cleanup ---------------------------------------------------------------------------


async def task_cleanup(spec: dict) -> dict:
    config = spec["config"]
    table = config["postgres"]["tables"]["refreshTokens"]
    expired, live = spec["expired"], spec["live"]
    instance = await SuperTokens.create(config, start_cleanup=False)
    try:
        # Bulk insert on a plain connection (the library's pool has a statement timeout).
        params = {k: v for k, v in config["postgres"].items()
                  if k in ("host", "port", "user", "password", "database")}
        t0 = time.perf_counter()
        conn = pgutil.connect(params)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                now = now_ms()
                cur.execute(
                    f'INSERT INTO "{table}" (session_handle, user_id, refresh_token_hash_2,'
                    " session_info, expires_at, jwt_user_payload)"
                    " SELECT gen_random_uuid()::text, '\"u' || (i %% 50000) || '\"',"
                    " md5(i::text) || md5((i + 1)::text), NULL,"
                    " CASE WHEN i <= %(expired)s THEN %(now)s - 60000 - (i %% 86400000)"
                    "      ELSE %(now)s + 86400000 + i END,"
                    " '{\"role\":\"member\"}'"
                    " FROM generate_series(1, %(total)s) AS i",
                    {"expired": expired, "now": now, "total": expired + live},
                )
                cur.execute(f'ANALYZE "{table}"')
        finally:
            conn.close()
        insert_s = time.perf_counter() - t0

        # Server-like loop: a 5 ms timer records the gaps between its ticks.
        loop = asyncio.get_running_loop()
        interval = 0.005
        gaps: list[float] = []
        worst = [0.0, 0.0]  # the longest gap, and this thread's CPU time within it
        last = [time.perf_counter(), time.thread_time()]
        running = [True]

        def tick() -> None:
            t, c = time.perf_counter(), time.thread_time()
            gap = t - last[0]
            gaps.append(gap)
            if gap > worst[0]:
                worst[:] = [gap, c - last[1]]
            last[:] = [t, c]
            if running[0]:
                loop.call_later(interval, tick)

        loop.call_later(interval, tick)
        t0 = time.perf_counter()
        deleted = await instance.cleanup.run()
        cleanup_s = time.perf_counter() - t0
        running[0] = False
        await asyncio.sleep(interval * 2)

        async with instance.storage.pool.acquire() as c:
            async with c.cursor() as cur:
                await cur.execute(f'SELECT count(*) FROM "{table}"')
                remaining = (await cur.fetchone())[0]
        gaps.sort()
        return {
            "expired": expired,
            "live": live,
            "insert_s": insert_s,
            "cleanup_s": cleanup_s,
            "deleted": deleted,
            "remaining": remaining,
            "ticks": len(gaps),
            "max_stall_ms": max(0.0, (gaps[-1] - interval) * 1e3) if gaps else float("nan"),
            "max_stall_on_cpu_ms": worst[1] * 1e3,
            "p99_gap_ms": percentile(gaps, 99) * 1e3 if gaps else float("nan"),
            "ok": deleted == expired and remaining == live,
        }
    finally:
        await instance.close()


TASKS = {"refresh": task_refresh, "micro": task_micro, "pools": task_pools,
         "cleanup": task_cleanup}


def main() -> None:
    spec = json.loads(os.environ["BENCH_WORKER"])
    result = asyncio.run(TASKS[spec["task"]](spec))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
