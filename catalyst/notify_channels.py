"""The two ways an alert leaves the house: a JSON POST to a chat webhook, and an e-mail over SMTP.

Each sender makes one attempt within ``settings.notify_timeout`` and either returns or raises
:class:`DeliveryFailed` with a short, secret-free description (``timeout``, ``HTTP 500``). The
webhook URL embeds a token and the SMTP password is a password: neither is ever part of an error,
a log line or a row; exception texts (which quote URLs) are never passed on, only classified.
"""

from __future__ import annotations

import json
import logging
import smtplib
import socket
import ssl
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any
from urllib.parse import urlsplit

import requests

WEBHOOK = "webhook"
EMAIL = "email"
DISCORD_HOSTS = ("discord.com", "discordapp.com", "ptb.discord.com", "canary.discord.com")
SLACK_HOSTS = ("hooks.slack.com",)
DISCORD_LIMIT = 2000  # characters of ``content`` (Discord refuses longer with HTTP 400)
SLACK_LIMIT = 39_000  # Slack truncates ``text`` beyond 40,000 characters
SEVERITY_MARK = {"info": "[info]", "warning": "[WARNING]", "critical": "[CRITICAL]"}


class DeliveryFailed(Exception):
    """One attempt failed. ``retryable``: a later attempt may succeed (timeouts, 5xx, 429, refused connects)."""

    def __init__(self, error: str, retryable: bool = True):
        super().__init__(error)
        self.error = error
        self.retryable = retryable


@dataclass(frozen=True)
class Alert:
    """What is said, whatever the channel."""

    notification_id: int
    event: str
    severity: str
    title: str
    text: str
    occurred_at: datetime
    context: dict[str, Any] = field(default_factory=dict)

    @property
    def headline(self) -> str:
        return f"{SEVERITY_MARK.get(self.severity, self.severity)} Catalyst: {self.title}"

    def body(self) -> str:
        return f"{self.headline}\n{self.text}"


def configured(settings) -> list[str]:
    """The channels this configuration delivers to (none: the alert is logged only)."""
    found = []
    if settings.webhook_url:
        found.append(WEBHOOK)
    if settings.smtp_host and settings.alert_email_to and getattr(settings, "notify_via_email", True):
        found.append(EMAIL)
    return found


def target(channel: str, settings) -> str:
    """Where a channel delivers, safe to record: the webhook's host (never its path, which holds the
    token), or the e-mail recipients."""
    if channel == WEBHOOK:
        return urlsplit(settings.webhook_url or "").hostname or "?"
    return ", ".join(recipients(settings))


# -- webhook -------------------------------------------------------------------------------------
def webhook_payload(url: str, alert: Alert) -> dict[str, Any]:
    """Slack reads ``text``, Discord ``content``; other receivers get both and the structured alert."""
    host = (urlsplit(url).hostname or "").lower()
    body = alert.body()
    if host in DISCORD_HOSTS:
        return {"content": _clip(body, DISCORD_LIMIT)}
    if host in SLACK_HOSTS:
        return {"text": _clip(body, SLACK_LIMIT)}
    return {"text": _clip(body, SLACK_LIMIT), "content": _clip(body, DISCORD_LIMIT),
            "event": alert.event, "severity": alert.severity, "title": alert.title,
            "notification_id": alert.notification_id, "occurred_at": alert.occurred_at.isoformat(),
            "context": alert.context}


class _HideUrl(logging.Filter):
    """urllib3 logs each request line at DEBUG, path included: the webhook's path is its token."""

    secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a record that cannot be formatted is dropped, to be safe
            return False
        return not any(secret in message for secret in self.secrets)


_HIDE_URL = _HideUrl()
logging.getLogger("urllib3.connectionpool").addFilter(_HIDE_URL)


def send_webhook(settings, alert: Alert) -> None:
    """POST the alert as JSON; 2xx is delivered, 429 and 5xx are worth another try, other 4xx are not."""
    url = settings.webhook_url
    path = urlsplit(url).path
    if len(path) > 1:
        _HIDE_URL.secrets.add(path)
    timeout = settings.notify_timeout
    try:
        response = requests.post(url, data=json.dumps(webhook_payload(url, alert), default=str),
                                 headers={"Content-Type": "application/json", "User-Agent": "catalyst-notify"},
                                 timeout=(timeout, timeout), allow_redirects=False)
    except requests.Timeout:
        raise DeliveryFailed("timeout") from None
    except requests.ConnectionError as exc:
        raise DeliveryFailed(_connection_problem(exc)) from None
    except requests.RequestException as exc:
        raise DeliveryFailed(f"request failed ({type(exc).__name__})", retryable=False) from None
    status = response.status_code
    response.close()
    if 200 <= status < 300:
        return
    raise DeliveryFailed(f"HTTP {status}", retryable=status == 429 or status >= 500)


def _connection_problem(exc: BaseException) -> str:
    """``connection refused`` / ``connection reset`` / ``name not resolved``: never the exception text."""
    stack, seen = [exc], set()
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError):
            return "connection refused"
        if isinstance(current, ConnectionResetError):
            return "connection reset"
        if isinstance(current, socket.gaierror):
            return "name not resolved"
        if isinstance(current, TimeoutError):  # socket.timeout is TimeoutError
            return "timeout"
        reason = getattr(current, "reason", None)
        stack.extend([current.__cause__, current.__context__, reason if isinstance(reason, BaseException) else None,
                      *(a for a in current.args if isinstance(a, BaseException))])
    return "connection failed"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- e-mail --------------------------------------------------------------------------------------
def recipients(settings) -> list[str]:
    return [a.strip() for a in (settings.alert_email_to or "").replace(";", ",").split(",") if a.strip()]


def email_message(settings, alert: Alert) -> EmailMessage:
    sender = settings.alert_email_from or settings.smtp_username or f"catalyst@{socket.gethostname()}"
    msg = EmailMessage()
    msg["Subject"] = alert.headline
    msg["From"] = sender
    msg["To"] = ", ".join(recipients(settings))
    msg["Date"] = format_datetime(alert.occurred_at)
    msg["Message-ID"] = make_msgid(f"catalyst-{alert.notification_id}")
    msg["X-Catalyst-Event"] = alert.event
    msg["X-Catalyst-Severity"] = alert.severity
    details = "\n".join(f"  {k}: {v}" for k, v in sorted(alert.context.items()))
    msg.set_content(f"{alert.text}\n\n{alert.event} at {alert.occurred_at.isoformat()}"
                    + (f"\n\n{details}\n" if details else "\n"))
    return msg


def tls_context() -> ssl.SSLContext:
    """Certificates verified as a browser would (tests point this at their own CA)."""
    return ssl.create_default_context()


def send_email(settings, alert: Alert) -> None:
    """One SMTP session: STARTTLS when the server offers it (implicit TLS on port 465), AUTH when a
    username is set, then the message. 4xx replies and network trouble are retryable; 5xx are not."""
    timeout = settings.notify_timeout
    try:
        if settings.smtp_port == 465:
            server = smtplib.SMTP_SSL(settings.smtp_host, settings.smtp_port, timeout=timeout, context=tls_context())
        else:
            server = smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=timeout)
        with server:
            server.ehlo()
            if server.has_extn("starttls") and settings.smtp_port != 465:
                server.starttls(context=tls_context())
                server.ehlo()
            if settings.smtp_username:
                server.login(settings.smtp_username, settings.smtp_password or "")
            server.send_message(email_message(settings, alert))
    except smtplib.SMTPAuthenticationError as exc:
        raise DeliveryFailed(f"SMTP authentication refused ({exc.smtp_code})", retryable=False) from None
    except smtplib.SMTPRecipientsRefused:
        raise DeliveryFailed("SMTP recipients refused", retryable=False) from None
    except smtplib.SMTPResponseException as exc:
        raise DeliveryFailed(f"SMTP {exc.smtp_code}", retryable=400 <= exc.smtp_code < 500) from None
    except smtplib.SMTPNotSupportedError:
        raise DeliveryFailed("SMTP server does not support AUTH", retryable=False) from None
    except ssl.SSLError as exc:
        raise DeliveryFailed(f"TLS failed ({type(exc).__name__})", retryable=False) from None
    except smtplib.SMTPException as exc:  # disconnected mid-session (a timeout, a reset), and the like
        problem = _connection_problem(exc)  # SMTPException is an OSError too: caught before it
        raise DeliveryFailed(problem if problem != "connection failed" else f"SMTP failed ({type(exc).__name__})") \
            from None
    except OSError as exc:
        raise DeliveryFailed(_connection_problem(exc)) from None


SENDERS = {WEBHOOK: send_webhook, EMAIL: send_email}
