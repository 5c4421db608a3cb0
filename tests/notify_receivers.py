"""Local alert receivers for tests: a chat webhook (HTTP on 127.0.0.1) and an SMTP server (aiosmtpd)."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from tests.local_server import LocalServer

TOKEN = "XyZ-sEcReT-WebHook-T0ken-4242"
SMTP_USER = "alerts@example.test"
SMTP_PASSWORD = "smtp-PaSsW0rd-9876-secret"


class WebhookReceiver(LocalServer):
    """Answers POSTs like Slack (200 ``ok``). ``statuses`` scripts the first answers (e.g. [500, 500]);
    ``hold()`` keeps every request open, unanswered, until ``release()``."""

    thread_name = "fake-webhook"

    def __init__(self, statuses: list[int] | None = None, status: int = 200):
        self._stopping = threading.Event()
        self.statuses = list(statuses or [])
        self.status = status
        self.requests: list[dict] = []
        self.held = 0  # requests waiting now
        self._release = threading.Event()
        self._release.set()
        self._lock = threading.Lock()

    def start(self):
        return self._serve(self._handler())

    @property
    def url(self) -> str:
        return f"{self.base_url}/services/T0001/B0001/{TOKEN}"

    def hold(self) -> None:
        self._release.clear()

    def release(self) -> None:
        self._release.set()

    def bodies(self, event: str | None = None) -> list[dict]:
        with self._lock:
            return [r["json"] for r in self.requests if event is None or r["json"].get("event") == event]

    def _handler(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                record = {"path": self.path, "headers": dict(self.headers), "json": json.loads(raw or b"{}"),
                          "received": time.monotonic()}
                with receiver._lock:
                    receiver.requests.append(record)
                    status = receiver.statuses.pop(0) if receiver.statuses else receiver.status
                    receiver.held += 1
                try:
                    while not receiver._release.wait(0.05):
                        if receiver._stopping.is_set():
                            return
                finally:
                    with receiver._lock:
                        receiver.held -= 1
                record["answered"] = time.monotonic()
                body = b"ok" if status < 300 else b"error"
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # the client gave up (timed out) before the answer
                    record["client_gone"] = True

        return Handler


def free_port() -> int:
    """A port nothing listens on (a connection to it is refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MailSink:
    """aiosmtpd handler keeping every message it accepts."""

    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        from email import message_from_bytes
        from email.policy import default

        self.messages.append({"from": envelope.mail_from, "to": list(envelope.rcpt_tos),
                              "message": message_from_bytes(envelope.original_content or envelope.content,
                                                            policy=default),
                              "tls": session.ssl is not None})
        return "250 Message accepted for delivery"


def smtp_server(*, tls_cert: tuple[Path, Path] | None = None, password: str = SMTP_PASSWORD):
    """A started aiosmtpd Controller on 127.0.0.1 that accepts ``SMTP_USER``/``password``; STARTTLS
    offered (and required) when a certificate is given. Stop it with ``.stop()``."""
    import ssl

    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = getattr(auth_data, "login", None) == SMTP_USER.encode() and auth_data.password == password.encode()
        return AuthResult(success=ok, handled=False)  # aiosmtpd answers 535 itself on a failure

    sink = MailSink()
    kwargs = {}
    if tls_cert is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(tls_cert[0]), str(tls_cert[1]))
        kwargs.update(tls_context=context, require_starttls=True, auth_require_tls=True)
    else:
        kwargs.update(auth_require_tls=False)
    controller = Controller(sink, hostname="127.0.0.1", port=free_port(), authenticator=authenticator,
                            **kwargs)
    controller.start()
    controller.sink = sink
    return controller


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """(certificate, key) for 127.0.0.1, made with the openssl command."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    return cert, key


class HangingSocket:
    """Accepts TCP connections and never says a word (an SMTP server that hangs before its greeting)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]

    def close(self):
        self.sock.close()
