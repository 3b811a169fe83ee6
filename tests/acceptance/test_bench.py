"""The benchmark suite still runs: ``bench/run.py --quick`` on SQLite, without the peers.

Not a timed test (the numbers are not checked): it keeps "one command reproduces the table"
true as the code changes. The peers (Celery, RQ) are bench-only dependencies, not installed here.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_run_prints_every_scenario_and_writes_json() -> None:
    before = set((ROOT / "bench" / "results").glob("run-*.json"))
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--backends", "sqlite",
         "--no-peers"],
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    for scenario in ("a create", "b batch", "c dequeue", "d pull", "e dispatch", "f latency"):
        assert f"| sqlite | {scenario} |" in out.stdout, scenario
    assert "| sqlite | g scale |" in out.stdout
    written = set((ROOT / "bench" / "results").glob("run-*.json")) - before
    assert len(written) == 1
    doc = json.loads(written.pop().read_text())
    assert doc["quick"] is True
    assert {row["scenario"] for row in doc["rows"]} == {
        "a create", "b batch", "c dequeue", "d pull", "e dispatch", "f latency", "g scale"
    }  # fmt: skip
    assert all(row["value"] > 0 for row in doc["rows"])
    # Create latency is measured next to the bare handlers at the same rate, on the same run.
    latency = {
        row["baseline_name"]: row for row in doc["rows"] if row["what"].startswith("create p99")
    }
    assert set(latency) == {"bare ASGI", "bare Starlette+SQLite"}
    assert all(row["baseline"] > 0 for row in latency.values())
    assert latency["bare ASGI"]["target"] == "≤ 5 ms"


# The load generator's client (bench/loadgen.py) against a server on loopback whose every byte
# the test chooses: a client that miscounted answers would make every number of the table wrong.

sys.path.insert(0, str(ROOT / "bench"))
from loadgen import Client, ResponseError  # noqa: E402


@contextlib.asynccontextmanager
async def _scripted(answers: list[bytes], timeout: float = 300.0) -> AsyncIterator[_Scripted]:
    """A server that answers the n-th request of each connection with ``answers[n]`` (the last
    one over again), or closes the connection where the answer is empty; and a client of it.
    A request for ``/slow`` is answered after 0.3 s.
    Every connection and handler is closed and awaited on exit: one left to the garbage
    collector would fail a later test with its ResourceWarning."""
    seen: list[bytes] = []
    handlers: set[asyncio.Task[None]] = set()
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        writers.append(writer)
        try:
            for n in itertools.count():
                head = await reader.readuntil(b"\r\n\r\n")
                seen.append(head.split(b"\r\n", 1)[0])
                length = re.search(rb"Content-Length: (\d+)", head)
                if length:
                    await reader.readexactly(int(length.group(1)))
                answer = answers[min(n, len(answers) - 1)]
                if b" /slow " in head.split(b"\r\n", 1)[0]:
                    await asyncio.sleep(0.3)
                if not answer:
                    return
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed the connection
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = Client(f"http://127.0.0.1:{port}", timeout=timeout)
    try:
        yield _Scripted(client, seen)
    finally:
        client.close()
        server.close()
        for writer in writers:
            writer.close()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


@dataclass
class _Scripted:
    client: Client
    seen: list[bytes]


def _answer(status: int, body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n%s\r\n%s" % (status, len(body), extra, body)


async def test_loadgen_reuses_a_connection_and_returns_the_body() -> None:
    async with _scripted([_answer(201, b'{"a":1}'), _answer(200, b"two")]) as server:
        assert await server.client.request("POST", "/api/tasks", b"{}", 201) == b'{"a":1}'
        assert await server.client.request("GET", "/x", None, 200) == b"two"
        assert server.seen == [b"POST /api/tasks HTTP/1.1", b"GET /x HTTP/1.1"]  # one connection


async def test_loadgen_raises_on_an_unexpected_status_and_a_cut_answer() -> None:
    async with _scripted([_answer(500, b"boom")]) as server:
        with pytest.raises(ResponseError, match=re.escape("POST /api/tasks: 500 b'boom'")):
            await server.client.request("POST", "/api/tasks", b"{}", 201)
    cut = b"HTTP/1.1 200 X\r\nContent-Length: 10\r\n\r\nabc"
    async with _scripted([cut, b""], timeout=0.5) as server:
        with pytest.raises(ResponseError, match=re.escape("no whole answer in 0.5 s")):
            await server.client.request("GET", "/", None, 200)
    async with _scripted([b""]) as server:
        with pytest.raises(ResponseError, match="closed the connection"):
            await server.client.request("GET", "/", None, 200)


async def test_loadgen_opens_a_new_connection_after_connection_close() -> None:
    async with _scripted([_answer(200, b"1", b"Connection: close\r\n"), b""]) as server:
        # The server closes each connection after its first answer: the second request must
        # not be written into the closed one.
        assert await server.client.request("GET", "/a", None, 200) == b"1"
        assert await server.client.request("GET", "/b", None, 200) == b"1"
        assert server.seen == [b"GET /a HTTP/1.1", b"GET /b HTTP/1.1"]


async def test_loadgen_never_reads_a_cancelled_request_s_answer_as_the_next_one_s() -> None:
    async with _scripted([_answer(200, b"first"), _answer(200, b"second")]) as server:
        # The caller gives up before the answer; it still arrives on that connection later.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(server.client.request("GET", "/slow", None, 200), 0.05)
        await asyncio.sleep(0.4)
        # A new connection: its first answer is this request's, not the slow one's.
        assert await server.client.request("GET", "/next", None, 200) == b"first"
        assert server.seen == [b"GET /slow HTTP/1.1", b"GET /next HTTP/1.1"]
