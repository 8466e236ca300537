"""A machine's QMP connection as nixpkgs scripts use it (``machine.qmp_client``):
``send`` a command and get QEMU's reply, read the events QEMU sent.  Vouch
holds the connection; this forwards."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

from .bridge import bridge
from .durations import seconds
from .messages import message


class QMPAPIError(RuntimeError):
    """QEMU refused a QMP command: its error class and description."""

    def __init__(self, class_name: str | None, description: str | None, transaction_id: Any = None) -> None:
        self.class_name = class_name
        self.description = description
        self.transaction_id = transaction_id
        super().__init__(message("qmpAPIError", id=transaction_id, description=description, **{"class": class_name}))

    def __str__(self) -> str:
        return self.args[0]


class QMPSession:
    """The QMP connection of one machine."""

    def __init__(self, machine_name: str) -> None:
        self._machine = machine_name

    def send(self, cmd: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        """Runs QMP command ``cmd`` and returns QEMU's reply (``{"return": ...}``).

        Raises QMPAPIError when QEMU refuses it."""
        reply = bridge().call("qmp_send", machine=self._machine, command=str(cmd), arguments=args or None)
        error = reply.get("error") if isinstance(reply, dict) else None
        if error is not None:
            raise QMPAPIError(error.get("class"), error.get("desc"), reply.get("id"))
        return reply

    def wait_for_event(self, timeout: float | dt.timedelta | None = dt.timedelta(seconds=10)) -> dict[str, Any]:
        """The next event QEMU sent that the script has not read yet.

        Raises TimeoutError if none comes within ``timeout``."""
        event = bridge().call("qmp_next_event", machine=self._machine, timeout=seconds(timeout))
        if event is None:
            raise TimeoutError()
        return event

    def events(self, timeout: float | dt.timedelta | None = dt.timedelta(seconds=10)) -> Iterator[dict[str, Any]]:
        """Yields the events already queued, without waiting for more."""
        while True:
            event = bridge().call("qmp_next_event", machine=self._machine, timeout=0.0)
            if event is None:
                return
            yield event

    def read_pending_messages(self) -> list[dict[str, Any]]:
        return list(self.events())

    def close(self) -> None:
        """Vouch owns the connection: nothing to close here."""
