"""The benchmark suite still runs: ``bench/run.py --quick`` on SQLite, without the peers.

Not a timed test (the numbers are not checked): it keeps "one command reproduces the table"
true as the code changes. The peers (Celery, RQ) are bench-only dependencies, not installed here.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import subprocess
import sys
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


# The load generator's client (bench/loadgen.py) against a server on loopback whose every byte
# the test chooses: a client that miscounted answers would make every number of the table wrong.

sys.path.insert(0, str(ROOT / "bench"))
from loadgen import Client, ResponseError  # noqa: E402


async def _serve(answers: list[bytes]) -> tuple[asyncio.Server, list[bytes], str]:
    """A server that answers the n-th request of each connection with ``answers[n]`` (the last
    one over again) and then closes the connection if the answer is empty; returns the
    server, the requests' first lines and its URL."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for n in itertools.count():
                head = await reader.readuntil(b"\r\n\r\n")
                seen.append(head.split(b"\r\n", 1)[0])
                length = re.search(rb"Content-Length: (\d+)", head)
                if length:
                    await reader.readexactly(int(length.group(1)))
                answer = answers[min(n, len(answers) - 1)]
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
    return server, seen, f"http://127.0.0.1:{port}"


def _answer(status: int, body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n%s\r\n%s" % (status, len(body), extra, body)


async def test_loadgen_reuses_a_connection_and_returns_the_body() -> None:
    server, seen, url = await _serve([_answer(201, b'{"a":1}'), _answer(200, b"two")])
    client = Client(url)
    try:
        assert await client.request("POST", "/api/tasks", b"{}", 201) == b'{"a":1}'
        assert await client.request("GET", "/x", None, 200) == b"two"
        assert seen == [b"POST /api/tasks HTTP/1.1", b"GET /x HTTP/1.1"]  # one connection
    finally:
        client.close()
        server.close()
        await server.wait_closed()


async def test_loadgen_raises_on_an_unexpected_status_and_a_cut_answer() -> None:
    server, _, url = await _serve([_answer(500, b"boom")])
    client = Client(url)
    try:
        with pytest.raises(ResponseError, match=re.escape("POST /api/tasks: 500 b'boom'")):
            await client.request("POST", "/api/tasks", b"{}", 201)
    finally:
        client.close()
        server.close()
        await server.wait_closed()
    server, _, url = await _serve([b"HTTP/1.1 200 X\r\nContent-Length: 10\r\n\r\nabc", b""])
    client = Client(url, timeout=0.5)
    try:
        with pytest.raises(ResponseError, match=re.escape("no whole answer in 0.5 s")):
            await client.request("GET", "/", None, 200)
    finally:
        client.close()
        server.close()
        await server.wait_closed()
    server, _, url = await _serve([b""])
    client = Client(url)
    try:
        with pytest.raises(ResponseError, match="closed the connection"):
            await client.request("GET", "/", None, 200)
    finally:
        client.close()
        server.close()
        await server.wait_closed()


async def test_loadgen_opens_a_new_connection_after_connection_close() -> None:
    server, seen, url = await _serve([_answer(200, b"1", b"Connection: close\r\n"), b""])
    client = Client(url)
    try:
        # The server closes each connection after its first answer: the second request must
        # not be written into the closed one.
        assert await client.request("GET", "/a", None, 200) == b"1"
        assert await client.request("GET", "/b", None, 200) == b"1"
        assert seen == [b"GET /a HTTP/1.1", b"GET /b HTTP/1.1"]
    finally:
        client.close()
        server.close()
        await server.wait_closed()
