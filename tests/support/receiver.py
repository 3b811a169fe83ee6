"""A real callback receiver on loopback for the tests, with routes that misbehave on purpose.

Routes (all accept POST):
    /ok                   200 with a JSON body
    /status/{code}        that status; ``Retry-After`` from ?retry_after=
    /slow?seconds=S       waits S seconds, then 200
    /drip?seconds=S       sends headers, then one byte per second for S seconds
    /big?bytes=N          200 (or &status=S) with an N-byte body
    /redirect?to=URL      302 to URL
    /html                 200 with an HTML page
    /empty                204 with no body
    /text                 200 text/plain
    /fail-first/{n}       500 for the first n hits of a task id, then 200
    /gauge/{name}?seconds=S
                          waits S seconds (default 0), then 200; counts the requests in flight
                          per name: GET /gauge/{name} answers {"inFlight": n, "peak": m}, the
                          most that were ever in flight at once (a GET is not recorded as a hit)
Every hit is recorded (path, headers, body, time) before the answer.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import web


@dataclass(frozen=True)
class Hit:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    """When it came: ``time.monotonic()``, for durations this process times itself."""
    wall: float
    """When it came: ``time.time()``, to compare with the server's times and with waits the
    server schedules by its wall clock (backoff, Retry-After, schedules, rates), which can run
    apart from the monotonic clock on a virtual machine: ``at`` plus an offset taken once
    drifted by up to 17 s in one run."""

    @property
    def task_id(self) -> str:
        """The ``X-Task-Id`` header."""
        return self.headers.get("X-Task-Id", "")


@dataclass
class Receiver:
    """A receiver running on its own thread and event loop; ``url(path)`` builds callback URLs."""

    port: int = 0
    hits: list[Hit] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None
    _per_task: Counter[str] = field(default_factory=Counter)

    def url(self, path: str) -> str:
        """Return ``http://127.0.0.1:<port><path>``."""
        return f"http://127.0.0.1:{self.port}{path}"

    def hits_for(self, task_id: str) -> list[Hit]:
        """Return the hits whose ``X-Task-Id`` is ``task_id``."""
        with self._lock:
            return [hit for hit in self.hits if hit.task_id == task_id]

    def hits_on(self, path: str) -> list[Hit]:
        """Return the hits on ``path``."""
        with self._lock:
            return [hit for hit in self.hits if hit.path == path]

    async def _record(self, request: web.Request) -> bytes:
        body = await request.read()
        with self._lock:
            self.hits.append(
                Hit(request.path, dict(request.headers), body, time.monotonic(), time.time())
            )
            self._per_task[request.headers.get("X-Task-Id", "")] += 1
        return body

    def _app(self) -> web.Application:
        async def ok(request: web.Request) -> web.StreamResponse:
            body = await self._record(request)
            return web.json_response({"ok": True, "bytes": len(body)})

        async def status(request: web.Request) -> web.StreamResponse:
            await self._record(request)
            headers = {}
            if "retry_after" in request.query:
                headers["Retry-After"] = request.query["retry_after"]
            code = int(request.match_info["code"])
            return web.json_response({"status": code}, status=code, headers=headers)

        async def slow(request: web.Request) -> web.StreamResponse:
            await self._record(request)
            await asyncio.sleep(float(request.query.get("seconds", "60")))
            return web.json_response({"slow": True})

        async def drip(request: web.Request) -> web.StreamResponse:
            await self._record(request)
            response = web.StreamResponse(status=200, headers={"Content-Type": "text/plain"})
            await response.prepare(request)
            for _ in range(int(float(request.query.get("seconds", "60")))):
                await response.write(b"x")
                await asyncio.sleep(1)
            await response.write_eof()
            return response

        async def big(request: web.Request) -> web.StreamResponse:
            await self._record(request)
            size = int(request.query["bytes"])
            status = int(request.query.get("status", "200"))
            response = web.StreamResponse(status=status, headers={"Content-Type": "text/plain"})
            if request.query.get("chunked") == "1":
                response.enable_chunked_encoding()
            else:
                response.content_length = size
            await response.prepare(request)
            chunk = b"a" * 65536
            sent = 0
            try:
                while sent < size:
                    part = chunk[: size - sent]
                    await response.write(part)
                    sent += len(part)
                await response.write_eof()
            except (ConnectionResetError, RuntimeError):
                pass  # the platform hung up once over its cap: expected
            return response

        async def redirect(request: web.Request) -> web.StreamResponse:
            await self._record(request)
            raise web.HTTPFound(request.query["to"])

        async def html(request: web.Request) -> web.StreamResponse:
            await self._record(request)
            return web.Response(
                text="<html><body><h1>Hi</h1></body></html>", content_type="text/html"
            )

        async def empty(request: web.Request) -> web.StreamResponse:
            await self._record(request)
            return web.Response(status=204)

        async def text(request: web.Request) -> web.StreamResponse:
            await self._record(request)
            return web.Response(text="plain words", content_type="text/plain")

        async def latin1(request: web.Request) -> web.StreamResponse:
            await self._record(request)
            charset = request.query.get("charset", "latin-1")
            return web.Response(
                body="café".encode("latin-1"),
                headers={"Content-Type": f"text/plain; charset={charset}"},
            )

        async def fail_first(request: web.Request) -> web.StreamResponse:
            await self._record(request)
            with self._lock:
                count = self._per_task[request.headers.get("X-Task-Id", "")]
            if count <= int(request.match_info["n"]):
                return web.json_response({"attempt": count}, status=500)
            return web.json_response({"attempt": count})

        gauges: dict[str, list[int]] = {}  # name -> [in flight now, peak]; loop thread only

        async def gauge(request: web.Request) -> web.StreamResponse:
            await self._record(request)
            state = gauges.setdefault(request.match_info["name"], [0, 0])
            state[0] += 1
            state[1] = max(state[1], state[0])
            try:
                await asyncio.sleep(float(request.query.get("seconds", "0")))
            finally:
                state[0] -= 1
            return web.json_response({"ok": True})

        async def gauge_read(request: web.Request) -> web.StreamResponse:
            in_flight, peak = gauges.get(request.match_info["name"], [0, 0])
            return web.json_response({"inFlight": in_flight, "peak": peak})

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/ok", ok)
        app.router.add_post("/status/{code}", status)
        app.router.add_post("/slow", slow)
        app.router.add_post("/drip", drip)
        app.router.add_post("/big", big)
        app.router.add_post("/redirect", redirect)
        app.router.add_post("/html", html)
        app.router.add_post("/empty", empty)
        app.router.add_post("/text", text)
        app.router.add_post("/latin1", latin1)
        app.router.add_post("/fail-first/{n}", fail_first)
        app.router.add_post("/gauge/{name}", gauge)
        app.router.add_get("/gauge/{name}", gauge_read)
        app.router.add_route("*", "/{tail:.*}", ok)
        return app

    def start(self) -> Receiver:
        """Start serving on 127.0.0.1 (``port`` 0 picks a free one); returns self."""
        ready = threading.Event()
        loop = asyncio.new_event_loop()
        self._loop = loop

        async def serve() -> None:
            self._runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=0.5)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", self.port)
            await site.start()
            server = site._server
            assert isinstance(server, asyncio.Server)
            self.port = server.sockets[0].getsockname()[1]
            ready.set()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(serve())
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="test-receiver", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the test receiver did not start")
        return self

    def stop(self) -> None:
        """Stop serving and join the thread."""
        loop, runner = self._loop, self._runner
        if loop is None or runner is None:
            return

        async def shut_down() -> None:
            await runner.cleanup()
            # Handlers still running past the runner's shutdown timeout (a callback the tests
            # keep waiting) end here, rather than be destroyed pending when the loop closes.
            handlers = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shut_down(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        loop.close()
