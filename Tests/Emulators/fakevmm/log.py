"""The emulator's own log lines: prefixed so they never look like guest console
output (which owns stdout)."""
import sys
import threading
import time

_lock = threading.Lock()
_out = sys.stderr
_prefix = "[fake-vmm]"


def setup(prefix, path=None):
    global _out, _prefix
    _prefix = prefix
    if path:
        _out = open(path, "a", buffering=1)


def log(*parts):
    line = "%s %.3f %s\n" % (_prefix, time.monotonic(), " ".join(str(p) for p in parts))
    with _lock:
        try:
            _out.write(line)
            _out.flush()
        except (OSError, ValueError):
            pass
