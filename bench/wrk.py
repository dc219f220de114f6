"""Running wrk (Debian package ``wrk``) and reading its report."""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import tempfile
from typing import Optional, Sequence

from .common import proc_cpu_seconds, system_cpu


def ensure_wrk() -> str:
    """The path of wrk; installs the Debian package when root and it is missing."""
    path = shutil.which("wrk")
    if path:
        return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("bench: wrk is missing; installing the Debian package 'wrk' (apt-get)", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.STDOUT, "env": env}
        if subprocess.call(["apt-get", "install", "-y", "-q", "wrk"], **quiet) != 0:
            subprocess.call(["apt-get", "update", "-q"], **quiet)
            subprocess.call(["apt-get", "install", "-y", "-q", "wrk"], **quiet)
        path = shutil.which("wrk")
        if path:
            return path
    raise SystemExit(
        "bench: 'wrk' is not installed and could not be installed automatically.\n"
        "       Install it (Debian/Ubuntu: sudo apt-get install -y wrk) and run again."
    )


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse(output: str) -> dict:
    out: dict = {}
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output)
    if not m:
        raise ValueError("wrk printed no request count:\n" + output)
    out["requests"] = int(m.group(1))
    out["elapsed_s"] = _ms(m.group(2) + m.group(3)) / 1e3
    m = re.search(r"Requests/sec:\s+([\d.]+)", output)
    out["rps"] = float(m.group(1)) if m else out["requests"] / out["elapsed_s"]
    for q in ("50", "99"):
        m = re.search(rf"^\s+{q}(?:\.0+)?%\s+(\S+)", output, re.MULTILINE)
        out[f"p{q}_ms"] = _ms(m.group(1)) if m else float("nan")
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    out["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    out["socket_errors"] = sum(int(g) for g in m.groups()) if m else 0
    out["failed"] = out["non_2xx"] + out["socket_errors"]
    return out


LOGIN_SCRIPT = """\
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("POST", "/api/login?u=%(prefix)s" .. counter, nil, "")
end
"""


def login_script(prefix: str) -> str:
    fd, path = tempfile.mkstemp(prefix="bench-login-", suffix=".lua")
    with os.fdopen(fd, "w") as f:
        f.write(LOGIN_SCRIPT % {"prefix": prefix})
    return path


def run(
    wrk: str,
    url: str,
    *,
    server_pid: int,
    duration: float,
    connections: int,
    pin: Sequence[str] = (),
    headers: Sequence[str] = (),
    script: Optional[str] = None,
) -> dict:
    """One wrk run; adds the server's CPU time per request."""
    cmd = [*pin, wrk, "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s",
           "--timeout", "5s", "--latency"]
    for h in headers:
        cmd += ["-H", h]
    if script:
        cmd += ["-s", script]
    cmd.append(url)
    cpu0 = proc_cpu_seconds(server_pid)
    sys0, steal0 = system_cpu()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    sys1, steal1 = system_cpu()
    cpu = proc_cpu_seconds(server_pid) - cpu0
    load_cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip()}")
    out = parse(proc.stdout)
    out["server_cpu_s"] = cpu
    out["load_cpu_s"] = load_cpu
    # CPU used by anything else (PostgreSQL included) while wrk ran, in cores.
    out["other_cpu_cores"] = max(0.0, (sys1 - sys0) - cpu - load_cpu) / out["elapsed_s"]
    out["steal_cores"] = (steal1 - steal0) / out["elapsed_s"]
    out["cpu_us_per_req"] = cpu / out["requests"] * 1e6 if out["requests"] else float("nan")
    return out
