"""A local fake of the Anthropic Messages API, so tests drive the real ``anthropic`` SDK over HTTP.

    with FakeAnthropic() as api:                       # or the ``fake_anthropic`` fixture
        client = anthropic.Anthropic(api_key="sk-ant-test", base_url=api.base_url, max_retries=0)
        api.script("exit", "rate_limit")               # what the next requests get, in order
        ...
        api.requests[0].body["tool_choice"]            # every request body, as JSON
        api.requests[0].api_key                        # the key it carried (x-api-key or Bearer)

Actions (one per request; when the script is empty ``api.default`` is used, "hold" unless set):

- ``"exit"`` / ``"hold"``: a ``tool_use`` answer of ``exit_decision`` with exit true / false
- ``"missing_reason"``: a ``tool_use`` answer whose input lacks ``reason``
- ``"text_only"``: a plain text answer, no tool call (stop_reason ``end_turn``)
- ``"rate_limit"``: HTTP 429 with a ``rate_limit_error`` body and ``retry-after: 1``
- ``"server_error"``: HTTP 500 with an ``api_error`` body
- ``"slow"``: sleep ``api.slow_seconds`` (interrupted at shutdown) before answering "hold"
- a dict: sent as the ``exit_decision`` tool input verbatim

Responses carry the real shape: id, type "message", role, model (echoed), content, stop_reason,
stop_sequence and usage {input_tokens, output_tokens} (``api.usage`` sets the numbers).
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.local_server import LocalServer

ACTIONS = ("exit", "hold", "missing_reason", "text_only", "rate_limit", "server_error", "slow")


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any

    @property
    def api_key(self) -> str | None:
        """The credential sent: ``x-api-key``, or the token of ``Authorization: Bearer`` (what SDK 2.x sends)."""
        if self.headers.get("x-api-key"):
            return self.headers["x-api-key"]
        scheme, _, token = self.headers.get("authorization", "").partition(" ")
        return token if scheme.lower() == "bearer" and token else None


@dataclass
class FakeAnthropic(LocalServer):
    thread_name = "fake-anthropic"
    default: Any = "hold"
    slow_seconds: float = 5.0
    usage: dict[str, int] = field(default_factory=lambda: {"input_tokens": 412, "output_tokens": 37})
    requests: list[RecordedRequest] = field(default_factory=list)

    def __post_init__(self):
        self._script: deque = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None

    # -- control -------------------------------------------------------------------------------------

    def script(self, *actions: Any) -> FakeAnthropic:
        for action in actions:
            if not isinstance(action, dict) and action not in ACTIONS:
                raise ValueError(f"unknown fake action {action!r}; one of {ACTIONS} or a dict")
        with self._lock:
            self._script.extend(actions)
        return self

    @property
    def calls(self) -> int:
        with self._lock:
            return len(self.requests)

    def start(self) -> FakeAnthropic:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"null")
                except ValueError:
                    body = raw.decode(errors="replace")
                fake._handle(self, RecordedRequest("POST", self.path, {k.lower(): v for k, v in self.headers.items()},
                                                   body))

            def do_GET(self):
                self._reply(404, {"type": "error", "error": {"type": "not_found_error", "message": "no such path"}})

            def _reply(self, status: int, payload: dict, headers: dict | None = None) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.send_header("request-id", f"req_{uuid.uuid4().hex[:24]}")
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout): fine
                    pass

        return self._serve(Handler)

    # -- serving -------------------------------------------------------------------------------------

    def _handle(self, handler, recorded: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(recorded)
            action = self._script.popleft() if self._script else self.default
        if not recorded.path.split("?")[0].rstrip("/").endswith("/v1/messages"):
            handler._reply(404, {"type": "error", "error": {"type": "not_found_error", "message": recorded.path}})
            return
        if action == "rate_limit":
            handler._reply(429, {"type": "error", "error": {"type": "rate_limit_error",
                                                            "message": "Number of request tokens has exceeded your "
                                                                       "per-minute rate limit"}},
                           {"retry-after": "1"})
            return
        if action == "server_error":
            handler._reply(500, {"type": "error", "error": {"type": "api_error", "message": "Internal server error"}})
            return
        if action == "slow":
            self._stopping.wait(self.slow_seconds)
            action = "hold"
        model = recorded.body.get("model", "claude-haiku-4-5") if isinstance(recorded.body, dict) else "unknown"
        handler._reply(200, self.message(action, model))

    def message(self, action: Any, model: str) -> dict:
        """A Messages API response body for ``action``."""
        if action == "text_only":
            content = [{"type": "text", "text": "I would probably hold this position for now."}]
            stop = "end_turn"
        else:
            if isinstance(action, dict):
                args = action
            elif action == "missing_reason":
                args = {"exit": True}
            else:
                args = {"exit": action == "exit",
                        "reason": "Momentum is fading below VWAP; take the gain." if action == "exit"
                        else "Signals are moderate and the trend is intact; keep holding."}
            content = [{"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:24]}", "name": "exit_decision",
                        "input": args}]
            stop = "tool_use"
        return {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant", "model": model,
                "content": content, "stop_reason": stop, "stop_sequence": None, "usage": dict(self.usage)}


@pytest.fixture
def fake_anthropic():
    with FakeAnthropic() as api:
        yield api
