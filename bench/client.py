"""The refresh-loop load client: ``python -m bench.client`` (spec in $BENCH_CLIENT).

N concurrent clients, each on its own keep-alive connection (raw asyncio
streams, minimal HTTP/1.1 parsing), each holding its own session and always
presenting the latest cookies it was given, like a browser would: the
``sRefreshToken``, ``sAccessToken`` and ``sIdRefreshToken`` of the previous
response. Every refresh must answer 200 with a new ``sRefreshToken``;
anything else is counted as a failure (and that client logs in again,
untimed, to go on).

Mode ``bare`` sends the same kind of POST to the bare server, whose POST
answers with refresh-like cookies: that is this client's own ceiling.

Reads the server's CPU time from /proc/<pid>/stat at the start and end of the
timed window, and its own; prints one JSON document.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Optional

from .common import percentile, proc_cpu_seconds, system_cpu

COOKIES = (b"sRefreshToken", b"sAccessToken", b"sIdRefreshToken")


class Failure(Exception):
    pass


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    i = head.find(b"\r\nContent-Length: ")
    if i < 0:
        i = head.lower().find(b"\r\ncontent-length: ")
    if i >= 0:
        j = head.index(b"\r\n", i + 2)
        length = int(head[i + 18:j])
    body = await reader.readexactly(length) if length else b""
    return status, head, body


def set_cookies(head: bytes, jar: dict[bytes, bytes]) -> bool:
    """Update ``jar`` from the Set-Cookie headers; True if a new sRefreshToken came."""
    got_refresh = False
    start = 0
    while True:
        i = head.find(b"\r\nSet-Cookie: ", start)
        if i < 0:
            return got_refresh
        j = head.index(b"\r\n", i + 2)
        line = head[i + 14:j]
        name, _, rest = line.partition(b"=")
        value = rest.split(b";", 1)[0]
        if name in COOKIES:
            if value:
                jar[name] = value
                if name == b"sRefreshToken":
                    got_refresh = True
            else:
                jar.pop(name, None)
        start = j


def cookie_header(jar: dict[bytes, bytes]) -> bytes:
    return b"; ".join(k + b"=" + v for k, v in jar.items())


class Client:
    def __init__(self, index: int, spec: dict) -> None:
        self.index = index
        self.spec = spec
        self.host = spec["host"].encode()
        self.jar: dict[bytes, bytes] = {}
        self.reader: Optional[asyncio.StreamReader] = None
        self.writer: Optional[asyncio.StreamWriter] = None
        self.latencies: list[int] = []
        self.ok = 0
        self.failed = 0
        self.statuses: dict[int, int] = {}
        self.logins = 0

    async def connect(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader, self.writer = await asyncio.open_connection(self.spec["host"], self.spec["port"])

    async def login(self) -> None:
        assert self.reader is not None and self.writer is not None
        self.logins += 1
        if self.spec["mode"] == "bare":
            self.jar = {name: b"x" * size for name, size in zip(COOKIES, self.spec["cookie_sizes"])}
            return
        user = f"bench-refresh-{os.getpid()}-{self.index}-{self.logins}".encode()
        self.writer.write(
            b"POST /api/login?u=" + user + b" HTTP/1.1\r\nHost: " + self.host
            + b"\r\nContent-Length: 0\r\n\r\n"
        )
        status, head, _ = await read_response(self.reader)
        self.jar = {}
        if status != 200 or not set_cookies(head, self.jar):
            raise Failure(f"login answered {status}")

    async def run(self, start: asyncio.Event, deadline_box: list[float]) -> None:
        await start.wait()
        deadline = deadline_box[0]
        path = self.spec["path"].encode()
        prefix = b"POST " + path + b" HTTP/1.1\r\nHost: " + self.host + b"\r\nCookie: "
        suffix = b"\r\nContent-Length: 0\r\n\r\n"
        perf = time.perf_counter_ns
        reader, writer = self.reader, self.writer
        assert reader is not None and writer is not None
        latencies = self.latencies
        while time.perf_counter() < deadline:
            t = perf()
            writer.write(prefix + cookie_header(self.jar) + suffix)
            try:
                status, head, _ = await read_response(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                self.failed += 1
                self.statuses[-1] = self.statuses.get(-1, 0) + 1
                await self.connect()
                await self.login()
                reader, writer = self.reader, self.writer
                continue
            latencies.append(perf() - t)
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if status == 200 and set_cookies(head, self.jar):
                self.ok += 1
            else:
                self.failed += 1
                if self.spec["mode"] != "bare":
                    await self.login()  # the session is over: start another, untimed-ish


async def main_async(spec: dict) -> dict:
    clients = [Client(i, spec) for i in range(spec["clients"])]
    await asyncio.gather(*(c.connect() for c in clients))
    await asyncio.gather(*(c.login() for c in clients))
    start = asyncio.Event()
    deadline_box = [0.0]
    tasks = [asyncio.ensure_future(c.run(start, deadline_box)) for c in clients]
    await asyncio.sleep(0)
    server_cpu0 = proc_cpu_seconds(spec["server_pid"])
    own_cpu0 = proc_cpu_seconds()
    sys0, steal0 = system_cpu()
    t0 = time.perf_counter()
    deadline_box[0] = t0 + spec["duration"]
    start.set()
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    server_cpu = proc_cpu_seconds(spec["server_pid"]) - server_cpu0
    own_cpu = proc_cpu_seconds() - own_cpu0
    sys1, steal1 = system_cpu()
    for c in clients:
        if c.writer is not None:
            c.writer.close()
    lat = sorted(x for c in clients for x in c.latencies)
    requests = sum(c.ok + c.failed for c in clients)
    statuses: dict[str, int] = {}
    for c in clients:
        for k, v in c.statuses.items():
            statuses[str(k)] = statuses.get(str(k), 0) + v
    return {
        "requests": requests,
        "failed": sum(c.failed for c in clients),
        "statuses": statuses,
        "elapsed_s": elapsed,
        "rps": requests / elapsed if elapsed else 0.0,
        "p50_ms": percentile(lat, 50) / 1e6,
        "p99_ms": percentile(lat, 99) / 1e6,
        "server_cpu_s": server_cpu,
        "cpu_us_per_req": server_cpu / requests * 1e6 if requests else float("nan"),
        "client_cpu_s": own_cpu,
        "client_cpu_share": own_cpu / elapsed if elapsed else 0.0,
        "other_cpu_cores": max(0.0, (sys1 - sys0) - server_cpu - own_cpu) / elapsed,
        "steal_cores": (steal1 - steal0) / elapsed,
        "extra_logins": sum(c.logins - 1 for c in clients),
    }


def main() -> None:
    spec = json.loads(os.environ["BENCH_CLIENT"])
    print(json.dumps(asyncio.run(main_async(spec))), flush=True)


if __name__ == "__main__":
    main()
