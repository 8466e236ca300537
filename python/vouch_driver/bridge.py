"""The connection to the Vouch process that runs the test.

Vouch starts this interpreter with one end of a socket pair as file
descriptor 3 (``VOUCH_BRIDGE_FD``).  Every request is one JSON line
``{"id", "call", "machine"?, "args", "where"?}``; every answer is one JSON
line ``{"id", "result"}`` or ``{"id", "error": {"kind", "message"}}``.
All real work (booting, commands, waits, logging) happens in Vouch; this
side only translates nixpkgs-style calls into requests.
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


class RequestedAssertionFailed(VouchError):
    """A test assertion failed (a command's status, a wait that timed out, a
    unit that failed), as opposed to the machinery breaking."""


class NotSupportedByVouch(VouchError, NotImplementedError):
    """The nixpkgs driver has this, Vouch does not (yet)."""

    def __init__(self, name, why="not supported yet by Vouch"):
        super().__init__("unsupported", f"{why}: {name}")


_ASSERTION_KINDS = {"commandFailed", "commandSucceeded", "timeout", "unitFailed", "assertionFailed"}

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

    def call(self, method, /, machine=None, **args):
        """Sends one request and waits for its answer.

        Raises VouchError (or RequestedAssertionFailed) with Vouch's full
        message when the call fails.  Ctrl-C while waiting asks Vouch to
        cancel the call and raises KeyboardInterrupt once it has stopped.
        """
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
                    raise VouchError("protocolError", "the Vouch process closed the bridge")
                answer = json.loads(line)
                if answer.get("id") != request["id"]:
                    continue
                break
        if interrupted:
            raise KeyboardInterrupt
        error = answer.get("error")
        if error is not None:
            kind = error.get("kind", "other")
            if kind == "unsupported":
                raise NotSupportedByVouch(method, error.get("message", "not supported"))
            cls = RequestedAssertionFailed if kind in _ASSERTION_KINDS else VouchError
            raise cls(kind, error.get("message", "unknown error"))
        return answer.get("result")

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
