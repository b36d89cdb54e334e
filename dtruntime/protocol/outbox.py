"""Collects what a node wants done: messages to send and events to report."""

from __future__ import annotations

from dataclasses import dataclass, field

from .events import Event
from .messages import Message


@dataclass(slots=True)
class Ready:
    """The output of one node call.

    ``messages`` are ``(endpoint, message)`` pairs for the driver to send, in order;
    ``events`` are for the local API; ``next_deadline`` is when ``tick`` must be called
    next at the latest (the driver may call it earlier; it is idempotent).
    """

    messages: list[tuple[str, Message]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    next_deadline: float = float("inf")


class Outbox:
    """Shared by a node's components; drained into a :class:`Ready` after each call."""

    __slots__ = ("messages", "events")

    def __init__(self) -> None:
        self.messages: list[tuple[str, Message]] = []
        self.events: list[Event] = []

    def send(self, endpoint: str, message: Message) -> None:
        self.messages.append((endpoint, message))

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def drain(self, next_deadline: float) -> Ready:
        ready = Ready(self.messages, self.events, next_deadline)
        self.messages = []
        self.events = []
        return ready
