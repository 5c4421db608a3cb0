"""A local fake of the Anthropic Messages API, so tests drive the real ``anthropic`` SDK over HTTP.

    with FakeAnthropic() as api:                       # or the ``fake_anthropic`` fixture
        client = anthropic.Anthropic(api_key="sk-ant-test", base_url=api.base_url, max_retries=0)
        api.script("exit", "rate_limit")               # what the next requests get, in order
        ...
        api.requests[0].body["tool_choice"]            # every request body, as JSON
        api.requests[0].api_key                        # the key it carried (x-api-key or Bearer)

Actions (one per request; when the script is empty ``api.default`` is used, "hold" unless set):

- ``"exit"`` / ``"hold"``: a ``tool_use`` answer with input {exit: true / false, reason}
- ``"enter"`` / ``"pass"``: a ``tool_use`` answer with input {enter: true / false, confidence, reason}
  (``api.confidence``, 0.82 unless set)
- ``"missing_reason"``: a ``tool_use`` answer whose input is ``{"exit": true}``
- ``"wrong_tool"``: a ``tool_use`` block of a tool the request did not offer
- ``"text_only"``: a plain text answer, no tool call (stop_reason ``end_turn``)
- ``"rate_limit"``: HTTP 429 with a ``rate_limit_error`` body and ``retry-after: 1``
- ``"server_error"``: HTTP 500 with an ``api_error`` body
- ``"overloaded"``: HTTP 529 with an ``overloaded_error`` body
- ``"slow"``: sleep ``api.slow_seconds`` (interrupted at shutdown) before answering "hold"
- a dict: sent verbatim as the input of the tool the request forces

``api.responder = fn`` picks each action from the request body instead (concurrent callers).

A ``tool_use`` block is named after the tool that ``tool_choice`` forces (``exit_decision`` when
none is forced). Requests are checked the way the real API checks them, before any action: no
credential is a 401 ``authentication_error``; no ``anthropic-version`` header, a missing
``model`` / ``max_tokens`` / ``messages``, a ``tool_choice`` naming a tool not in ``tools``, or a
``strict`` tool whose schema uses what strict mode does not support (numeric and string bounds,
``additionalProperties`` other than false) is a 400 ``invalid_request_error``. Such a request is
recorded but consumes no scripted action.

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
from typing import Any, Callable

import pytest

from tests.local_server import LocalServer

ACTIONS = ("exit", "hold", "enter", "pass", "missing_reason", "wrong_tool", "text_only", "rate_limit", "server_error",
           "overloaded", "slow")
# JSON Schema keywords that strict tool use does not support (the SDK's transform_schema moves
# them into descriptions); the API refuses a strict schema that uses them.
STRICT_UNSUPPORTED = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minLength",
                      "maxLength", "pattern", "minProperties", "maxProperties", "oneOf", "not", "if", "then", "else")


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
    confidence: float = 0.82
    # When set, picks each request's action from its JSON body (for concurrent callers whose
    # arrival order is not known); the script and the default are then not used.
    responder: Callable[[Any], Any] | None = None
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
        refusal = self.refusal(recorded)
        with self._lock:
            self.requests.append(recorded)
            if refusal is not None:
                action = None
            elif self.responder is None:
                action = self._script.popleft() if self._script else self.default
        if refusal is None and self.responder is not None:
            action = self.responder(recorded.body)
        if refusal is not None:
            status, kind, message = refusal
            handler._reply(status, {"type": "error", "error": {"type": kind, "message": message}})
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
        if action == "overloaded":
            handler._reply(529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
            return
        if action == "slow":
            self._stopping.wait(self.slow_seconds)
            action = "hold"
        body = recorded.body
        choice = body.get("tool_choice") or {}
        tool = choice.get("name") if choice.get("type") == "tool" else None
        handler._reply(200, self.message(action, body["model"], tool or "exit_decision"))

    # -- what the real API refuses -------------------------------------------------------------------

    def refusal(self, recorded: RecordedRequest) -> tuple[int, str, str] | None:
        """(status, error type, message) when the real API would refuse this request, else None."""
        if not recorded.path.split("?")[0].rstrip("/").endswith("/v1/messages"):
            return 404, "not_found_error", recorded.path
        if not recorded.api_key:
            return 401, "authentication_error", "x-api-key header is required"
        if not recorded.headers.get("anthropic-version"):
            return 400, "invalid_request_error", "anthropic-version: header is required"
        body = recorded.body
        if not isinstance(body, dict):
            return 400, "invalid_request_error", "the request body must be a JSON object"
        for name, kind in (("model", str), ("max_tokens", int), ("messages", list)):
            if not isinstance(body.get(name), kind) or isinstance(body.get(name), bool):
                return 400, "invalid_request_error", f"{name}: Field required"
        if body["max_tokens"] < 1 or not body["messages"]:
            return 400, "invalid_request_error", "max_tokens and messages must not be empty"
        tools = body.get("tools") or []
        names = [t.get("name") for t in tools if isinstance(t, dict)]
        choice = body.get("tool_choice")
        if choice is not None:
            if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
                return 400, "invalid_request_error", "tool_choice: unknown type"
            if choice["type"] == "tool" and choice.get("name") not in names:
                return 400, "invalid_request_error", f"tool_choice: tool {choice.get('name')!r} not found in tools"
            if choice["type"] != "none" and not tools:
                return 400, "invalid_request_error", "tool_choice may only be specified while providing tools"
        for tool in tools:
            schema = tool.get("input_schema") if isinstance(tool, dict) else None
            if not isinstance(schema, dict) or schema.get("type") != "object":
                return 400, "invalid_request_error", "tools.input_schema: an object schema is required"
            if tool.get("strict") and (problem := _strict_problem(schema)):
                return 400, "invalid_request_error", f"tools.{tool.get('name')}.input_schema: {problem}"
        return None

    def message(self, action: Any, model: str, tool: str = "exit_decision") -> dict:
        """A Messages API response body for ``action``, answering through ``tool``."""
        if action == "text_only":
            content = [{"type": "text", "text": "I would probably hold this position for now."}]
            stop = "end_turn"
        else:
            if isinstance(action, dict):
                args = action
            elif action == "missing_reason":
                args = {"exit": True}
            elif action in ("enter", "pass"):
                args = {"enter": action == "enter", "confidence": self.confidence,
                        "reason": "Clean breakout above the opening range on 3x volume with fresh news."
                        if action == "enter" else "Extended far above VWAP with a stale catalyst; wait."}
            else:
                args = {"exit": action == "exit",
                        "reason": "Momentum is fading below VWAP; take the gain." if action == "exit"
                        else "Signals are moderate and the trend is intact; keep holding."}
            name = "some_other_tool" if action == "wrong_tool" else tool
            content = [{"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:24]}", "name": name, "input": args}]
            stop = "tool_use"
        return {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant", "model": model,
                "content": content, "stop_reason": stop, "stop_sequence": None, "usage": dict(self.usage)}


def _strict_problem(schema: Any, where: str = "") -> str | None:
    """What strict tool use would refuse in ``schema`` (recursively), or None."""
    if not isinstance(schema, dict):
        return None
    for key in STRICT_UNSUPPORTED:
        if key in schema:
            return f"{where or 'schema'}: '{key}' is not supported with strict: true"
    if schema.get("type") == "object" and schema.get("additionalProperties", False) is not False:
        return f"{where or 'schema'}: additionalProperties must be false with strict: true"
    for name, sub in (schema.get("properties") or {}).items():
        if (problem := _strict_problem(sub, f"{where}.{name}" if where else name)):
            return problem
    for key in ("items", "anyOf", "allOf"):
        subs = schema.get(key)
        for sub in subs if isinstance(subs, list) else [subs]:
            if (problem := _strict_problem(sub, where)):
                return problem
    return None


@pytest.fixture
def fake_anthropic():
    with FakeAnthropic() as api:
        yield api
