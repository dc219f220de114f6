"""One benchmark server process: ``python -m bench.server`` (spec in $BENCH_SERVER).

Kinds (each runs in its own process):

- ``bare``: a plain JSON handler; GET answers the same document as the
  session handler; POST answers like the refresh endpoint (three Set-Cookie
  headers of the same sizes, written as precomputed strings) so that the
  refresh client's own ceiling can be measured against it.
- ``signed``: Tornado's own ``get_signed_cookie`` authentication (reference).
- ``pyjwt``: a bare handler that decodes one PyJWT token per request (reference).
- ``st``: tornado_supertokens, ``SessionRequestHandler`` GET on /me, login on
  /api/login, ``RefreshHandler`` on /api/refresh.

Prints ``READY <port>`` once listening; SIGTERM stops it cleanly.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from typing import Any

import jwt
import tornado.httpserver
import tornado.netutil
import tornado.web

from .common import JWT_PAYLOAD, SESSION_INFO, USER_ID, response_body


def _quiet(handler: Any) -> None:
    """Access logging off: the benchmark counts statuses itself."""


def bare_app(spec: dict) -> tornado.web.Application:
    handle = str(uuid.uuid4())
    # Same shape and sizes as a refresh response's cookies (see POST).
    cookies = spec.get("refresh_like_cookies", [])

    class BareHandler(tornado.web.RequestHandler):
        def get(self) -> None:
            self.write(response_body(USER_ID, handle, JWT_PAYLOAD))

        def post(self) -> None:
            for value in cookies:
                self.add_header("Set-Cookie", value)
            self.write({"message": "refreshed"})

    return tornado.web.Application([(r"/bare", BareHandler)], log_function=_quiet)


def signed_app(spec: dict) -> tornado.web.Application:
    class SignedHandler(tornado.web.RequestHandler):
        def get(self) -> None:
            raw = self.get_signed_cookie("session")
            if raw is None:
                self.set_status(401)
                self.finish({"message": "unauthorised"})
                return
            who = json.loads(raw)
            self.write(response_body(who["u"], who["h"], who["d"]))

    return tornado.web.Application(
        [(r"/signed", SignedHandler)], cookie_secret=spec["cookie_secret"], log_function=_quiet
    )


def pyjwt_app(spec: dict) -> tornado.web.Application:
    key = spec["jwt_key"].encode()

    class JwtHandler(tornado.web.RequestHandler):
        def get(self) -> None:
            token = self.get_cookie("token")
            try:
                claims = jwt.decode(
                    token or "", key, algorithms=["HS256"], options={"require": ["exp"]}
                )
            except jwt.PyJWTError:
                self.set_status(401)
                self.finish({"message": "unauthorised"})
                return
            self.write(response_body(claims["userId"], claims["sessionHandle"], claims["userData"]))

    return tornado.web.Application([(r"/jwt", JwtHandler)], log_function=_quiet)


async def st_app(spec: dict) -> tuple[tornado.web.Application, Any]:
    import tornado_supertokens as st

    instance = await st.init(spec["config"])

    class MeHandler(st.SessionRequestHandler):
        def get(self) -> None:
            s = self.session
            assert s is not None
            self.write(response_body(s.user_id, s.handle, s.jwt_payload))

    class LoginHandler(tornado.web.RequestHandler):
        async def post(self) -> None:
            user = self.get_query_argument("u", USER_ID)
            s = await st.create_new_session(self, user, JWT_PAYLOAD, SESSION_INFO)
            self.write(response_body(s.user_id, s.handle, s.jwt_payload))

    app = tornado.web.Application(
        [
            (r"/me", MeHandler),
            (r"/api/login", LoginHandler),
            (r"/api/refresh", st.RefreshHandler),
        ],
        supertokens=instance,
        log_function=_quiet,
    )
    return app, instance


async def serve(spec: dict) -> None:
    kind = spec["kind"]
    instance = None
    if kind == "bare":
        app = bare_app(spec)
    elif kind == "signed":
        app = signed_app(spec)
    elif kind == "pyjwt":
        app = pyjwt_app(spec)
    elif kind == "st":
        app, instance = await st_app(spec)
    else:
        raise SystemExit(f"unknown server kind {kind!r}")
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1", backlog=1024)
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {port}", flush=True)
    await stop.wait()
    server.stop()
    if instance is not None:
        await instance.close()


def main() -> None:
    asyncio.run(serve(json.loads(os.environ["BENCH_SERVER"])))


if __name__ == "__main__":
    main()
