"""One "server process" cleaning up, for the slow test of tests/test_cleanup_scale.py.

``python tests/cleanup_worker.py CONFIG_JSON BARRIER_DIR N``: starts a
SuperTokens instance on the config's tables (its own clock ten years ahead,
to show that expiry is judged by the database's clock), waits until N
processes are ready, then runs ``CleanupJob.run()`` while a 5 ms timer
records the gaps between its ticks (the IOLoop's stalls). Every batch is
recorded: whether it got the table's cleanup lock, how many rows it deleted,
and its round trip. The longest stall's own CPU time is recorded too (the
rest of it is the process waiting for a core). Prints one JSON document on
its last line.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

from tornado_supertokens.clock import ManualClock, SystemClock
from tornado_supertokens.supertokens import SuperTokens

TIMER_S = 0.005
TEN_YEARS_MS = 10 * 365 * 24 * 3_600_000


async def main() -> None:
    config, barrier, n = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    st = await SuperTokens.create(
        config, clock=ManualClock(SystemClock().now_ms() + TEN_YEARS_MS), start_cleanup=False
    )
    batches: list[dict[str, Any]] = []
    original = st.storage.delete_expired_batch

    async def recorded(limit: int) -> tuple[bool, int]:
        t0 = time.perf_counter()
        got, deleted = await original(limit)
        batches.append({"got": got, "deleted": deleted, "s": time.perf_counter() - t0,
                        "at": time.time()})
        return got, deleted

    st.storage.delete_expired_batch = recorded  # type: ignore[method-assign]

    open(os.path.join(barrier, str(os.getpid())), "w").close()
    deadline = time.monotonic() + 60
    while len(os.listdir(barrier)) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.001)

    loop = asyncio.get_running_loop()
    gaps: list[float] = []
    worst = [0.0, 0.0]  # the longest gap, and this thread's CPU time within it
    last = [time.perf_counter(), time.thread_time()]
    running = [True]

    def tick() -> None:
        now, cpu = time.perf_counter(), time.thread_time()
        gaps.append(now - last[0])
        if now - last[0] > worst[0]:
            worst[:] = [now - last[0], cpu - last[1]]
        last[:] = [now, cpu]
        if running[0]:
            loop.call_later(TIMER_S, tick)

    loop.call_later(TIMER_S, tick)
    t0 = time.perf_counter()
    deleted = await st.cleanup.run()
    duration = time.perf_counter() - t0
    running[0] = False
    await asyncio.sleep(TIMER_S * 2)
    await st.close()
    with_lock = [b for b in batches if b["got"]]
    print(json.dumps({
        "pid": os.getpid(),
        "deleted": deleted,
        "batches": batches,
        "batches_with_lock": len(with_lock),
        "refused": len(batches) - len(with_lock),
        "duration_s": duration,
        "ticks": len(gaps),
        "max_stall_ms": max(0.0, (max(gaps) - TIMER_S) * 1e3) if gaps else 0.0,
        "max_stall_on_cpu_ms": worst[1] * 1e3,
        "longest_batch_s": max((b["s"] for b in with_lock), default=0.0),
    }), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
