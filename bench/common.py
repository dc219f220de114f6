"""Small helpers shared by the orchestrator, the load client and the workers."""

from __future__ import annotations

import os
from typing import Sequence

CLK_TCK = os.sysconf("SC_CLK_TCK")

#: The user id of the verify figures, and its JWT payload: every handler
#: (bare, signed cookie, PyJWT, SessionRequestHandler) answers the same JSON
#: document, byte for byte the same size.
USER_ID = "bench-user-000001"
JWT_PAYLOAD = {"role": "member", "plan": "pro", "org": 42}
SESSION_INFO = {"agent": "bench"}


def proc_cpu_seconds(pid: int | str = "self") -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rindex(b")") + 2:].split()
    # fields[0] is field 3 (state): utime is field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(round(q / 100 * len(sorted_values) + 0.5)) - 1))
    return float(sorted_values[k])


def response_body(user_id: str, handle: str, data: object) -> dict:
    return {"userId": user_id, "sessionHandle": handle, "data": data}


def system_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        parts = f.readline().split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in parts[1:9])
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK


def idle_check(seconds: float = 1.0) -> float:
    """The machine's busy share (0..1 of all CPUs) over ``seconds`` of doing nothing."""
    import time

    b0, _ = system_cpu()
    time.sleep(seconds)
    b1, _ = system_cpu()
    return (b1 - b0) / seconds / (os.cpu_count() or 1)
