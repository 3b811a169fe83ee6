"""The test servers' own start-up: a port taken between :func:`free_port` and the bind (by
another test, or another test run on the machine) must not hand a test someone else's server."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from pathlib import Path

import httpx

from tests.support.backends import backend_env
from tests.support.server import Server


class _Impostor(http.server.BaseHTTPRequestHandler):
    """Answers every GET 200, as another taskplatform's /healthz would."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_server_whose_port_is_taken_moves_to_a_free_one(tmp_path: Path) -> None:
    impostor = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Impostor)
    threading.Thread(target=impostor.serve_forever, daemon=True).start()
    server = Server(backend_env("sqlite", tmp_path), tmp_path / "server.log")
    server.use_port(impostor.server_address[1])
    try:
        server.start()
        assert server.port != impostor.server_address[1]
        assert "address already in use" in server.log()
        # Its own: the impostor has no API.
        stats = httpx.get(f"{server.url}/api/stats", timeout=10)
        assert stats.status_code == 200
        assert "queueDepth" in stats.json()
    finally:
        server.stop()
        impostor.shutdown()
        impostor.server_close()


def test_workers_that_fail_to_start_are_told_to_serve(tmp_path: Path) -> None:
    """With ``serve --workers N``, uvicorn's parent stops when a worker fails to start, and
    returned as after a clean stop: ``serve`` exited 0 where one process exits 3, and a
    service manager (``Restart=on-failure``) took the failure for a stop. The supervisor
    notes it (``startup_failed``), and ``serve`` exits 3."""
    script = (
        "import uvicorn\n"
        "from taskplatform.api.supervisor import Supervisor\n"
        "config = uvicorn.Config('tests.support.failing_app:app', port=0, workers=2,"
        " lifespan='on', log_level='warning')\n"
        "supervisor = Supervisor(config, sockets=[config.bind_socket()])\n"
        "supervisor.run()\n"
        "print('startup failed:', supervisor.startup_failed)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
        check=False,
    )
    assert "startup failed: True" in done.stdout, done.stdout + done.stderr[-2000:]
