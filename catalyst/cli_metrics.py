"""``catalyst metrics``: serve Catalyst's Prometheus metrics (behind HTTP basic auth), or print them once.

The metrics name positions, P&L, services and the trading state, so the server refuses to start
without credentials; ``--no-auth`` is accepted only on a loopback address, where only this host can
connect. Credentials come from ``CATALYST_METRICS_BASIC_AUTH`` (``user:password``, several separated by
commas, as Flower takes them), else ``FLOWER_BASIC_AUTH``, so one secret can guard both dashboards.
They are never printed or logged.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import os
import socket
import sys
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import click

AUTH_VARIABLES = ("CATALYST_METRICS_BASIC_AUTH", "FLOWER_BASIC_AUTH")
REALM = "Catalyst metrics"

Credentials = frozenset[tuple[str, str]]


def read_credentials(environ=os.environ) -> tuple[Credentials, str] | None:
    """The first credentials variable that is set (and the variable's name), or None when neither is."""
    for variable in AUTH_VARIABLES:
        text = (environ.get(variable) or "").strip()
        if text:
            return parse_credentials(text, variable), variable
    return None


def parse_credentials(text: str, variable: str) -> Credentials:
    """``user:password[,user2:password2]``; anything else is refused without echoing the value."""
    pairs = set()
    for item in text.split(","):
        user, sep, password = item.strip().partition(":")
        if not sep or not user or not password:
            raise click.ClickException(f"{variable} must be user:password (several separated by commas); "
                                       "the value set is not (not shown)")
        pairs.add((user, password))
    return frozenset(pairs)


def authorized(header: str, credentials: Credentials) -> bool:
    """A ``Basic`` Authorization header naming one of ``credentials`` (compared in constant time)."""
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic" or not token:
        return False
    try:
        user, sep, password = base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return False
    if not sep:
        return False
    match = False
    for known_user, known_password in credentials:  # no early exit: every pair is compared
        same_user = hmac.compare_digest(user.encode(), known_user.encode())
        same_password = hmac.compare_digest(password.encode(), known_password.encode())
        match |= same_user and same_password
    return match


def _plain(start_response, status: str, body: str, headers: list[tuple[str, str]] = ()) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), *headers])
    return [body.encode()]


def metrics_app(registry, credentials: Credentials | None):
    """WSGI: ``/metrics`` (prometheus_client's exposition, gzip and ``name[]`` filters included), every path
    behind basic auth unless ``credentials`` is None."""
    from prometheus_client import make_wsgi_app

    exposition = make_wsgi_app(registry)

    def app(environ, start_response):
        if credentials is not None and not authorized(environ.get("HTTP_AUTHORIZATION", ""), credentials):
            return _plain(start_response, "401 Unauthorized", "authentication required\n",
                          [("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"')])
        if environ.get("PATH_INFO") == "/metrics":
            return exposition(environ, start_response)
        return _plain(start_response, "404 Not Found", "Catalyst's metrics are at /metrics\n")

    return app


class _Server(ThreadingMixIn, WSGIServer):
    """One thread per request: a slow scrape never blocks the next one."""

    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    timeout = 10  # an idle or trickling connection cannot pin a thread (and, in numbers, the server) forever

    def log_message(self, format, *args):  # noqa: A002 - wsgiref's signature; one line per scrape is noise
        pass


def _server_class(bind: str) -> type[_Server]:
    try:
        if ipaddress.ip_address(bind).version == 6:
            return type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
    except ValueError:
        pass
    return _Server


def is_loopback(bind: str) -> bool:
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return False


def _credentials_for(bind: str, no_auth: bool) -> tuple[Credentials | None, str]:
    if no_auth:
        if not is_loopback(bind):
            raise click.UsageError(f"--no-auth is only allowed with a loopback --bind (127.0.0.1 or ::1), not "
                                   f"{bind}: the metrics show positions, P&L and services to anyone who can reach "
                                   "the port")
        return None, "none (--no-auth, loopback only)"
    found = read_credentials()
    if found is None:
        raise click.ClickException("refusing to serve metrics without credentials: set CATALYST_METRICS_BASIC_AUTH "
                                   "(or FLOWER_BASIC_AUTH) to user:password, or use --no-auth with --bind 127.0.0.1")
    credentials, variable = found
    return credentials, f"basic ({variable})"


@click.command()
@click.option("--port", type=click.IntRange(0, 65535), default=9108, show_default=True,
              help="Port to listen on (0: any free port, printed at start).")
@click.option("--bind", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 or :: for every interface).")
@click.option("--once", is_flag=True,
              help="Print the exposition text once and exit (1 if a source could not be read); no server.")
@click.option("--no-auth", is_flag=True,
              help="Serve without credentials. Only with a loopback --bind (127.0.0.1 or ::1): the metrics show "
                   "positions, P&L and services, so on any other address anyone who can reach the port would see "
                   "them.")
def metrics(port: int, bind: str, once: bool, no_auth: bool) -> None:
    """Catalyst's Prometheus metrics on http://BIND:PORT/metrics, read from the database and the broker at
    each scrape: queue depth, open positions, checks per minute, monitor lag, exits by reason, today's
    realized P&L, advisor calls and cost, heartbeat ages, trading state.

    \b
    Credentials: CATALYST_METRICS_BASIC_AUTH=user:password (several: comma-separated),
    else FLOWER_BASIC_AUTH. Without either it refuses to start (see --no-auth).
    """
    from catalyst.logs import configure_logging
    from catalyst.metrics import CatalystCollector, build_registry
    from catalyst.settings import get_settings

    # Never write the exporter's own warnings to agent_logs: with the database down that would hold every scrape.
    configure_logging(os.environ.get("LOG_LEVEL", "WARNING"), service="metrics", persist=False)
    credentials, auth = (None, "") if once else _credentials_for(bind, no_auth)
    registry = build_registry(CatalystCollector(get_settings()))
    if once:
        _print_once(registry)
        return
    try:
        server = make_server(bind, port, metrics_app(registry, credentials), server_class=_server_class(bind),
                             handler_class=_QuietHandler)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {bind}:{port}: {exc.strerror or exc}") from None
    host = f"[{bind}]" if ":" in bind else bind
    click.echo(f"serving Catalyst metrics on http://{host}:{server.server_port}/metrics (auth: {auth})")
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _print_once(registry) -> None:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    text = generate_latest(registry).decode()
    click.echo(text, nl=False)
    failed = sorted(s.labels["source"] for f in text_string_to_metric_families(text)
                    if f.name == "catalyst_scrape_errors" for s in f.samples if s.value)
    if failed:
        raise click.ClickException(f"some metrics could not be read: {', '.join(failed)}")
