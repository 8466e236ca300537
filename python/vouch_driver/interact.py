"""`machine.shell_interact()`: a real interactive shell on the guest;
`machine.console_interact()`: the serial console, raw.

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


def console_interact(machine):
    """Relays the terminal to the machine's serial console: keys go to its
    input (Ctrl-C included), its output is shown as it comes. Ctrl-D leaves."""
    b = bridge()
    sys.stdout.write(f"serial console of {machine.name}; Ctrl-D leaves\r\n")
    sys.stdout.flush()
    _, _, offset = b.call("console_read", machine=machine.name, offset=-1)
    shown = 0  # how much of the unterminated line has been shown
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd) if os.isatty(fd) else None
    try:
        if saved is not None:
            tty.setraw(fd)
        leaving = False
        while not leaving:
            ready, _, _ = select.select([fd], [], [], 0.05)
            if fd in ready:
                data = os.read(fd, 1024)
                if not data or b"\x04" in data:
                    data, leaving = data.split(b"\x04", 1)[0], True
                if data:
                    b.call("send_console", machine=machine.name, chars=data.decode("utf-8", "replace"))
            lines, partial, end = b.call("console_read", machine=machine.name, offset=int(offset))
            text = (lines + partial)[shown:]
            if text:
                os.write(sys.stdout.fileno(), text.replace("\n", "\r\n").encode())
            shown, offset = len(partial), end
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        sys.stdout.write("\n")
        sys.stdout.flush()
    b.call("log", message="serial console session ended", level="info", machine_name=machine.name)
