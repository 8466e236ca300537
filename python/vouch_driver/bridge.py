"""The connection to the Vouch process that runs the test.

Vouch starts this interpreter with one end of a socket pair as file
descriptor 3 (``VOUCH_BRIDGE_FD``).  Every request is one JSON line
``{"id", "call", "machine"?, "args", "where"?}``; every answer is one JSON
line ``{"id", "result"}`` or ``{"id", "error": {"kind", "message"}}``.

The calls, their arguments and the error kinds are Vouch's table
(``BridgeTable`` on the Swift side), which this side receives in the
answer to ``hello``: every request is checked against it before it is
sent, so a call Vouch does not know, a missing argument or one of the
wrong type is a bug found here, never a silent default there.  All real
work (booting, commands, waits, logging) happens in Vouch.
"""

import json
import os
import socket
import sys
import threading
import traceback


class VouchError(Exception):
    """A failure reported by Vouch: which machine, which command, the exit
    status and the output tail are all in the message."""

    def __init__(self, *args):
        # (kind, message) from the bridge; (message) from unittest's assertions.
        kind, message = args if len(args) == 2 else ("assertionFailed", args[0] if args else "")
        super().__init__(message)
        self.kind = kind


class RequestedAssertionFailed(VouchError, AssertionError):
    """A test assertion failed (a command's status, a wait that timed out, a
    unit that failed), as opposed to the machinery breaking.  An
    AssertionError, as nixpkgs' class of the same name."""


class MachineError(VouchError):
    """A machine could not do what was asked: it would not boot, went away,
    or its VMM refused."""


class NotSupportedByVouch(VouchError, NotImplementedError):
    """The nixpkgs driver has this, Vouch does not (yet)."""

    def __init__(self, name, why="not supported yet by Vouch"):
        super().__init__("unsupported", f"{why}: {name}")


class BridgeContractError(TypeError):
    """A request that Vouch's table does not allow: a bug in this package."""


_CLASSES = {
    "RequestedAssertionFailed": RequestedAssertionFailed,
    "MachineError": MachineError,
    "VouchError": VouchError,
}

_TYPES = {
    "string": lambda v: isinstance(v, str),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "strings": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
}


def check_request(table, method, machine, args):
    """Raises BridgeContractError unless the table allows this request."""
    calls = table["calls"]
    if method not in calls:
        raise BridgeContractError(f"vouch_driver: Vouch has no call {method!r}")
    call = calls[method]
    if (call["scope"] == "machine") != (machine is not None):
        raise BridgeContractError(f"vouch_driver: {method} is a {call['scope']} call")
    expected = call["args"]
    for name in args:
        if name not in expected:
            raise BridgeContractError(f"vouch_driver: {method} has no argument {name!r} (arguments: {', '.join(sorted(expected))})")
    for name, spec in expected.items():
        if name not in args:
            raise BridgeContractError(f"vouch_driver: {method}: missing argument {name!r}")
        value = args[name]
        if value is None:
            if not spec["nullable"]:
                raise BridgeContractError(f"vouch_driver: {method}: argument {name!r} cannot be None")
        elif not _TYPES[spec["type"]](value):
            raise BridgeContractError(
                f"vouch_driver: {method}: argument {name!r} must be {spec['type']}, got {type(value).__name__} {value!r}")


_script_path = None


def set_script_path(path):
    """Frames of this file count as 'the script' when reporting locations."""
    global _script_path
    _script_path = os.path.abspath(path) if path else None


def _caller_location():
    frame = sys._getframe(2)
    fallback = None
    while frame is not None:
        name = frame.f_code.co_filename
        if _script_path is not None and os.path.abspath(name) == _script_path:
            return {"file": name, "line": frame.f_lineno}
        if fallback is None and not name.startswith(os.path.dirname(__file__)):
            fallback = {"file": name, "line": frame.f_lineno}
        frame = frame.f_back
    return fallback


class Bridge:
    def __init__(self, fd):
        self._sock = socket.socket(fileno=fd)
        self._reader = self._sock.makefile("rb")
        self._lock = threading.Lock()
        self._next_id = 0
        self.table = None

    def hello(self):
        """The first call: the run's facts, and the table every later call is checked against."""
        facts = self._exchange("hello", None, {})
        self.table = facts["table"]
        return facts

    def call(self, method, /, machine=None, **args):
        """Sends one request and waits for its answer.

        Raises the table's exception class for the error kind (nixpkgs'
        RequestedAssertionFailed for failed commands and waits, MachineError
        for machines that went away) with Vouch's full message.  Ctrl-C while
        waiting asks Vouch to cancel the call and raises KeyboardInterrupt
        once it has stopped.
        """
        if self.table is None:
            raise BridgeContractError("vouch_driver: call hello() first")
        check_request(self.table, method, machine, args)
        return self._exchange(method, machine, args)

    def _exchange(self, method, machine, args):
        request = {"call": method, "args": args}
        if machine is not None:
            request["machine"] = machine
        where = _caller_location()
        if where:
            request["where"] = where
        with self._lock:
            self._next_id += 1
            request["id"] = self._next_id
            self._send(request)
            interrupted = False
            while True:
                try:
                    line = self._reader.readline()
                except KeyboardInterrupt:
                    if not interrupted:
                        interrupted = True
                        self._send({"interrupt": True})
                    continue
                if not line:
                    raise MachineError("protocolError", "the Vouch process closed the bridge")
                answer = json.loads(line)
                if answer.get("id") != request["id"]:
                    continue
                break
        if interrupted:
            raise KeyboardInterrupt
        error = answer.get("error")
        if error is not None:
            raise self.exception(method, error.get("kind", "other"), error.get("message", "unknown error"))
        return answer.get("result")

    def exception(self, method, kind, message):
        """The Python exception for a Vouch error of `kind`."""
        name = (self.table or {}).get("errors", {}).get(kind, "VouchError")
        if name == "NotSupportedByVouch":
            return NotSupportedByVouch(method, message.split(": ", 1)[-1] if message.startswith("not supported yet") else message)
        if name == "KeyboardInterrupt":
            return KeyboardInterrupt(message)
        return _CLASSES.get(name, VouchError)(kind, message)

    def _send(self, message):
        data = (json.dumps(message) + "\n").encode()
        self._sock.sendall(data)

    def socket_path_stream(self, path):
        """A raw byte stream to a path Vouch named (for shell_interact)."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        return s


_bridge = None


def bridge():
    global _bridge
    if _bridge is None:
        fd = int(os.environ.get("VOUCH_BRIDGE_FD", "3"))
        _bridge = Bridge(fd)
    return _bridge


def format_failure(exc, script_path):
    """The traceback restricted to the script's own frames, plus the error."""
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if script_path and os.path.abspath(f.filename) == os.path.abspath(script_path)]
    lines = ["Traceback (most recent call last):"]
    for line in traceback.format_list(own or frames):
        lines.extend(l for l in line.rstrip("\n").split("\n"))
    lines.append(f"{type(exc).__name__}: {exc}")
    where = own[-1] if own else (frames[-1] if frames else None)
    return "\n".join(lines), where
