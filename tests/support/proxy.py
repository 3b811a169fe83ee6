"""A TCP proxy on loopback that a test can cut and restore, to take a database "down" for real."""

from __future__ import annotations

import asyncio
import contextlib
import threading


class Proxy:
    """Forwards ``127.0.0.1:<port>`` to ``target_host:target_port`` on its own thread.

    ``cut()`` closes the listener and every open connection (clients see the server vanish);
    ``restore()`` listens again on the same port. ``stall()`` keeps every connection open but
    holds the bytes either way (a server that stops answering: a stalled network, a paused VM);
    ``resume()`` passes them on.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def _call(self, coroutine: object) -> object:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)  # type: ignore[arg-type]

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Known from the accept on, so a cut while the upstream connect is pending drops it too.
        self._writers.add(writer)
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
            self._writers.add(upstream_writer)
            await asyncio.gather(
                self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer)
            )
        except OSError:
            pass
        finally:
            # Every socket closed here, whatever ended the connection (a cut, a stop that
            # cancels this task): one left to the garbage collector warns in a later test.
            for each in (writer, upstream_writer):
                if each is not None:
                    each.close()
                    self._writers.discard(each)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def start(self) -> Proxy:
        """Listen (on a free port the first time); returns self."""
        self._call(self._listen())
        return self

    def cut(self) -> None:
        """Stop listening and drop every connection."""
        self._call(self._close())

    def restore(self) -> None:
        """Listen again on the same port."""
        self._call(self._listen())

    def stall(self) -> None:
        """Hold every byte from now on, either way, with every connection left open."""
        self._loop.call_soon_threadsafe(self._flowing.clear)

    def resume(self) -> None:
        """Pass on what was held, and what comes next."""
        self._loop.call_soon_threadsafe(self._flowing.set)

    async def _shutdown(self) -> None:
        self._flowing.set()
        await self._close()
        handlers = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await asyncio.sleep(0)  # a closed transport closes its socket on the next loop pass

    def stop(self) -> None:
        """Close everything and end the thread."""
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
