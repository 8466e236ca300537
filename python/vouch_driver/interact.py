"""`machine.shell_interact()`: a real interactive shell on the guest.

Vouch starts `bash -i` on the guest's console and relays a byte stream to
it; this side puts the local terminal in raw mode, so Ctrl-C reaches the
guest (interrupting the command there) instead of ending the session.
Ctrl-D (exit) in the guest shell returns to the prompt.
"""

import os
import select
import sys
import termios
import tty

from .bridge import bridge


def shell_interact(machine):
    path = bridge().call("shell_interact", machine_name=machine.name)
    stream = bridge().socket_path_stream(path)
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd) if os.isatty(fd) else None
    try:
        if saved is not None:
            tty.setraw(fd)
        while True:
            ready, _, _ = select.select([fd, stream], [], [])
            if stream in ready:
                data = stream.recv(65536)
                if not data:
                    break
                os.write(sys.stdout.fileno(), data)
            if fd in ready:
                data = os.read(fd, 1024)
                if not data:
                    stream.sendall(b"\x04")
                    continue
                stream.sendall(data)
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        stream.close()
        sys.stdout.write("\n")
        sys.stdout.flush()
    bridge().call("shell_interact_done", machine_name=machine.name)
