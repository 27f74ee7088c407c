"""The Triton readiness probe script: exit 0 only when every listed model answers ready."""

from __future__ import annotations

import runpy
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

PROBE = runpy.run_path(str(Path(__file__).resolve().parents[2] / "containers" / "triton" / "models_ready.py"))


class _ReadyEndpoints(BaseHTTPRequestHandler):
    ready = {"teacher_fast", "query_encoder"}

    def do_GET(self):  # noqa: N802 (http.server's naming)
        name = self.path.removeprefix("/v2/models/").removesuffix("/ready")
        self.send_response(200 if name in self.ready else 400)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def server_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ReadyEndpoints)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_ready_only_when_every_model_is_ready(server_url, capsys):
    assert PROBE["main"](["--url", server_url, "--models", "teacher_fast,query_encoder"]) == 0
    assert PROBE["main"](["--url", server_url, "--models", "teacher_fast,teacher_slow"]) == 1
    assert "not ready: teacher_slow" in capsys.readouterr().err


def test_unreachable_server_and_empty_list_are_not_ready(monkeypatch):
    monkeypatch.delenv("UNISUP_READY_MODELS", raising=False)
    assert PROBE["not_ready"]("http://127.0.0.1:9", ["teacher_fast"], 0.5) == ["teacher_fast"]
    assert PROBE["main"](["--models", ""]) == 2
