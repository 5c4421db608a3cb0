"""kombu's Redis transport, dropping a queue entry it cannot read instead of ending the worker.

A Redis list entry is a JSON envelope (``body``, ``headers``, ``properties``) around the task
message. kombu parses it in ``Channel._brpop_read`` (its JSON reader can raise ``ValueError``,
``TypeError``, ``AttributeError`` for tagged objects such as ``{"__type__": "uuid"}``, or
``RecursionError`` for deep nesting) and builds the message in
``Transport._deliver``; an entry that is not JSON, not an object, or lacks the properties kombu
needs raises there, outside Celery's message handlers, and the worker stops with
``Unrecoverable error`` (or loops reconnecting, for a ``KeyError``); so does one whose
``delivery_info`` or ``delivery_tag`` the unacked bookkeeping cannot use. BRPOP has already taken the
entry off the list, so dropping it loses nothing that could have been delivered.
"""

from __future__ import annotations

from queue import Empty

from kombu.transport import redis

from workers.poison import facts, record_rejection


class Channel(redis.Channel):
    def _brpop_read(self, **options):
        self.connection.handed_over = False
        try:
            return super()._brpop_read(**options)
        except Exception as exc:  # noqa: BLE001 - JSON, tagged-object or recursion errors, before any delivery began
            if isinstance(exc, Empty) or self.connection.handed_over or isinstance(
                    exc, self.connection.connection_errors):
                raise  # an idle poll, a delivery's own failure, or Redis itself: Celery's to handle
            record_rejection("unreadable_envelope", f"{type(exc).__name__}: {exc}", None, facts(None, None, None))
            return True


class Transport(redis.Transport):
    Channel = Channel
    handed_over = False

    def _deliver(self, message, queue):
        self.handed_over = True
        problem = self._envelope_problem(message)
        if problem is not None:
            envelope = message if isinstance(message, dict) else {}
            record_rejection("unreadable_envelope", problem, None,
                             facts(envelope.get("headers"), queue, envelope.get("content-type")))
            return None
        return super()._deliver(message, queue)

    def _envelope_problem(self, raw) -> str | None:
        """Build the message as kombu will (no side effects) and say why that fails, if it does."""
        channel = next((c for c in self.channels if c is not None), None)
        if channel is None:
            return None
        try:
            message = channel.Message(raw, channel=channel)
        except Exception as exc:
            return f"envelope is not a kombu message: {type(exc).__name__}"
        delivery = message.delivery_info  # the unacked bookkeeping reads these and keys on the tag
        if not (isinstance(delivery, dict) and isinstance(delivery.get("exchange"), str)
                and isinstance(delivery.get("routing_key"), str)):
            return "envelope delivery_info lacks exchange and routing_key"
        if not isinstance(message.delivery_tag, str) or not message.delivery_tag:
            return "envelope delivery_tag is not a string"
        return None
