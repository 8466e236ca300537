"""Machine objects with the nixpkgs driver's classes, method names,
signatures, defaults and return values, each forwarding to Vouch's Machine.

``BaseMachine`` has what every backend has; ``QemuMachine`` (VMs) and
``NspawnMachine`` (containers) are the classes nixpkgs' scripts and type
stubs name; ``RemoteMachine`` is Vouch's existing hosts (ssh).  Durations
are ``datetime.timedelta`` or, the older form, seconds."""

from __future__ import annotations

import datetime as dt
import os
import pathlib
import shlex
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from .bridge import NotSupportedByVouch, bridge
from .durations import FIFTEEN_MINUTES, seconds
from .messages import message
from .qmp import QMPSession

# Python driver methods Vouch does not implement (yet).  Calling one raises
# NotSupportedByVouch naming it, instead of an AttributeError.
UNSUPPORTED = [
    "switch_root",
    "ssh_backdoor_command", "create_efi_vars", "write_efi_vars", "read_efi_vars", "dump_efi_vars",
]


class BaseMachine:
    """One node of the test, as the script sees it."""

    name: str
    backend: str
    out_dir: pathlib.Path
    state_dir: pathlib.Path
    tmp_dir: pathlib.Path
    shared_dir: pathlib.Path
    keep_machine_state: bool
    callbacks: list[Callable[[], Any]]

    def __init__(self, info: dict[str, Any], callbacks: list[Callable[[], Any]], out_dir: str | os.PathLike[str]) -> None:
        self.name = info["name"]
        self.backend = info.get("backend", "qemu")
        self.out_dir = pathlib.Path(out_dir)
        self.state_dir = pathlib.Path(info.get("stateDirectory", "/nonexistent/vm-state-" + self.name))
        self.tmp_dir = self.state_dir.parent
        self.shared_dir = pathlib.Path(info.get("sharedDirectory", str(self.tmp_dir / "shared-xchg")))
        self.keep_machine_state = False
        self.callbacks = callbacks

    def __repr__(self) -> str:
        return f"<{type(self).__name__} '{self.name}'>"

    def _call(self, method, **args):
        self.run_callbacks()
        return bridge().call(method, machine=self.name, **args)

    def run_callbacks(self) -> None:
        for callback in self.callbacks:
            callback()

    def __getattr__(self, attr):
        if attr in UNSUPPORTED:
            def unsupported(*args, **kwargs):
                raise NotSupportedByVouch(attr)
            return unsupported
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{attr}'")

    # -- state ---------------------------------------------------------------

    @property
    def booted(self) -> bool:
        return bridge().call("booted", machine=self.name)

    @property
    def connected(self) -> bool:
        return self.booted

    def is_up(self) -> bool:
        return bridge().call("is_up", machine=self.name)

    def log(self, msg: object) -> None:
        bridge().call("log", message=str(msg), level="info", machine_name=self.name)

    def log_serial(self, msg: object) -> None:
        self.log(msg)

    def nested(self, msg: object, attrs: dict[str, str] | None = None) -> AbstractContextManager[Any]:
        from .symbols import _Nested
        return _Nested(str(msg), self.name)

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        self._call("start", allow_reboot=False)

    def shutdown(self) -> None:
        self._call("shutdown")

    def wait_for_shutdown(self, timeout: float | dt.timedelta | None = None) -> None:
        self._call("wait_for_shutdown", timeout=seconds(timeout))

    def release(self) -> None:
        self._call("crash")

    # -- commands ------------------------------------------------------------

    def execute(self, command: str, check_return: bool = True, check_output: bool = True, timeout: float | dt.timedelta | None = FIFTEEN_MINUTES) -> tuple[int, str]:
        status, output = self._call(
            "execute", command=command, timeout=seconds(timeout),
            tolerate_loss=not (check_return and check_output))
        if not check_output:
            return (-2, "")
        if not check_return:
            return (-1, output)
        return (status, output)

    def succeed(self, *commands: str, timeout: float | dt.timedelta | None = None) -> str:
        return self._call("succeed", commands=[str(c) for c in commands], timeout=seconds(timeout))

    def fail(self, *commands: str, timeout: float | dt.timedelta | None = None) -> str:
        return self._call("fail", commands=[str(c) for c in commands], timeout=seconds(timeout))

    def wait_until_succeeds(self, command: str, timeout: float | dt.timedelta | None = FIFTEEN_MINUTES, attempt_timeout: float | dt.timedelta | None = None) -> str:
        return self._call("wait_until_succeeds", command=command, timeout=seconds(timeout),
                          attempt_timeout=seconds(attempt_timeout))

    def wait_until_fails(self, command: str, timeout: float | dt.timedelta | None = FIFTEEN_MINUTES, attempt_timeout: float | dt.timedelta | None = None) -> str:
        return self._call("wait_until_fails", command=command, timeout=seconds(timeout),
                          attempt_timeout=seconds(attempt_timeout))

    def sleep(self, secs: float | dt.timedelta | None = None, duration: float | dt.timedelta | None = None) -> None:
        if secs is not None and duration is not None:
            raise TypeError(message("sleepBothArguments"))
        if secs is None and duration is None:
            raise TypeError(message("sleepNoArgument"))
        self._call("sleep", seconds=seconds(duration if duration is not None else secs, allow_none=False))

    # -- waits ---------------------------------------------------------------

    def wait_for_unit(self, unit: str, user: str | None = None, timeout: float | dt.timedelta | None = FIFTEEN_MINUTES) -> None:
        self._call("wait_for_unit", unit=unit, user=user, timeout=seconds(timeout))

    def wait_for_unit_active_state(self, unit: str, state: str, user: str | None = None, timeout: float | dt.timedelta | None = FIFTEEN_MINUTES) -> None:
        """Waits until the unit's ActiveState is ``state``, whatever it passes through."""
        self._call("wait_for_unit_active_state", unit=unit, state=state, user=user, timeout=seconds(timeout))

    def wait_for_job(self, jobname: str) -> None:
        self.wait_for_unit(jobname)

    def wait_for_file(self, filename: str | os.PathLike[str], timeout: float | dt.timedelta | None = FIFTEEN_MINUTES) -> None:
        self._call("wait_for_file", path=str(filename), timeout=seconds(timeout))

    def wait_for_open_port(self, port: int, addr: str = "localhost", timeout: float | dt.timedelta | None = FIFTEEN_MINUTES) -> None:
        self._call("wait_for_open_port", port=int(port), addr=addr, timeout=seconds(timeout))

    def wait_for_closed_port(self, port: int, addr: str = "localhost", timeout: float | dt.timedelta | None = FIFTEEN_MINUTES) -> None:
        self._call("wait_for_closed_port", port=int(port), addr=addr, timeout=seconds(timeout))

    def wait_for_open_unix_socket(self, addr: str | os.PathLike[str], is_datagram: bool = False, timeout: float | dt.timedelta | None = FIFTEEN_MINUTES) -> None:
        self._call("wait_for_open_unix_socket", path=str(addr), is_datagram=bool(is_datagram), timeout=seconds(timeout))

    def wait_for_console_text(self, regex: str, timeout: float | dt.timedelta | None = None) -> str:
        return self._call("wait_for_console_text", regex=regex, timeout=seconds(timeout))

    def get_console_log(self) -> str:
        return self._call("get_console_log")

    # -- systemd -------------------------------------------------------------

    def systemctl(self, q: str, user: str | None = None) -> tuple[int, str]:
        status, output = self._call("systemctl", query=q, user=user)
        return (status, output)

    def get_unit_info(self, unit: str, user: str | None = None) -> dict[str, str]:
        return self._call("get_unit_info", unit=unit, user=user)

    def get_unit_property(self, unit: str, property: str, user: str | None = None) -> str:
        return self._call("get_unit_property", unit=unit, property=property, user=user)

    def require_unit_state(self, unit: str, require_state: str = "active") -> None:
        self._call("require_unit_state", unit=unit, state=require_state)

    def start_job(self, jobname: str, user: str | None = None) -> tuple[int, str]:
        status, output = self._call("start_job", unit=jobname, user=user)
        return (status, output)

    def stop_job(self, jobname: str, user: str | None = None) -> tuple[int, str]:
        status, output = self._call("stop_job", unit=jobname, user=user)
        return (status, output)

    # -- files ---------------------------------------------------------------

    def copy_from_host(self, source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        self._call("copy_from_host", source=os.path.abspath(str(source)), target=str(target))

    def copy_from_host_via_shell(self, source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        import base64
        with open(source, "rb") as fh:
            content = base64.b64encode(fh.read()).decode()
        target = str(target)
        self.succeed(f"mkdir -p \"$(dirname {shlex.quote(target)})\"",
                     f"echo -n {content} | base64 -d > {shlex.quote(target)}")

    def copy_from_machine(self, source: str | os.PathLike[str], target_dir: str | os.PathLike[str] = "") -> None:
        """Copies ``source`` to ``out_dir / target_dir`` (an absolute
        ``target_dir`` is used as it is, as pathlib's ``/`` does)."""
        self._call("copy_from_machine", source=str(source), target_dir=str(target_dir))

    def copy_from_vm(self, source: str | os.PathLike[str], target_dir: str | os.PathLike[str] = "") -> None:
        self.copy_from_machine(source, target_dir)

    # -- screens, keys, consoles --------------------------------------------

    def screenshot(self, filename: str | os.PathLike[str]) -> None:
        """Saves the display as a PNG: no dot in the name adds ``.png``, no
        slash puts it in the output directory."""
        filename = str(filename)
        if "." not in filename:
            filename += ".png"
        if "/" not in filename:
            filename = os.path.join(self.out_dir, filename)
        self._call("screenshot", path=os.path.abspath(filename))

    def get_screen_text(self) -> str:
        return self._call("get_screen_text")

    def get_screen_text_variants(self) -> list[str]:
        return self._call("get_screen_text_variants")

    def wait_for_text(self, regex: str, timeout: float | dt.timedelta | None = FIFTEEN_MINUTES) -> None:
        self._call("wait_for_text", regex=regex, timeout=seconds(timeout))

    def send_key(self, key: str, delay: float | dt.timedelta | None = 0.01, log: bool | None = True) -> None:
        self._call("send_key", key=key, delay=0.0 if delay is None else seconds(delay, allow_none=False))

    def send_chars(self, chars: str, delay: float | dt.timedelta | None = 0.01) -> None:
        self._call("send_chars", chars=chars, delay=0.0 if delay is None else seconds(delay, allow_none=False))

    def send_console(self, chars: str) -> None:
        self._call("send_console", chars=chars)

    def get_tty_text(self, tty: int | str) -> str:
        return self._call("get_tty_text", tty=int(tty))

    def wait_until_tty_matches(self, tty: int | str, regexp: str, timeout: float | dt.timedelta | None = FIFTEEN_MINUTES) -> None:
        self._call("wait_until_tty_matches", tty=int(tty), regex=regexp, timeout=seconds(timeout))

    def dump_tty_contents(self, tty: int | str) -> None:
        self._call("dump_tty_contents", tty=int(tty))

    def wait_for_x(self, timeout: float | dt.timedelta | None = FIFTEEN_MINUTES) -> None:
        self._call("wait_for_x", timeout=seconds(timeout))

    def get_window_names(self) -> list[str]:
        return self._call("get_window_names")

    def wait_for_window(self, regexp: str, timeout: float | dt.timedelta | None = FIFTEEN_MINUTES) -> None:
        self._call("wait_for_window", regex=regexp, timeout=seconds(timeout))

    # -- interactive ---------------------------------------------------------

    def shell_interact(self, address: str | None = None) -> None:
        from .interact import shell_interact
        shell_interact(self)

    def console_interact(self) -> None:
        """The serial console in this terminal, raw; Ctrl-D leaves."""
        from .interact import console_interact
        console_interact(self)


class _VMMachine(BaseMachine):
    """What VMs and containers share beyond the base: crash, reboot, links,
    port forwarding, snapshots."""

    def crash(self) -> None:
        self._call("crash")

    def reboot(self) -> None:
        self._call("reboot")

    def block(self) -> None:
        self._call("block")

    def unblock(self) -> None:
        self._call("unblock")

    def forward_port(self, host_port: int | None = 8080, guest_port: int = 80) -> int:
        return self._call("forward_port", host_port=None if host_port is None else int(host_port), guest_port=int(guest_port))

    def snapshot_create(self, name: str) -> None:
        self._call("snapshot_create", name=str(name))

    def snapshot_restore(self, name: str) -> None:
        self._call("snapshot_restore", name=str(name))


class QemuMachine(_VMMachine):
    """A VM (nixpkgs' ``QemuMachine``)."""

    def __init__(self, info: dict[str, Any], callbacks: list[Callable[[], Any]], out_dir: str | os.PathLike[str]) -> None:
        super().__init__(info, callbacks, out_dir)
        self._qmp = QMPSession(self.name)

    def start(self, allow_reboot: bool = False) -> None:
        """Boots the machine; with allow_reboot, a reboot in the guest resets it instead of ending it."""
        self._call("start", allow_reboot=bool(allow_reboot))

    @property
    def qmp_client(self) -> QMPSession:
        """The machine's QMP connection (``send``, ``wait_for_event``, ``events``)."""
        return self._qmp

    def send_monitor_command(self, command: str) -> str:
        """What the human monitor printed for ``command``, its ``(qemu) `` prompt included."""
        return self._call("send_monitor_command", command=command)

    def wait_for_qmp_event(self, event_filter: Callable[[dict[str, Any]], bool], timeout: float | dt.timedelta | None = None) -> dict[str, Any]:
        """The first QMP event from now on for which ``event_filter(event)`` is true.

        Raises TimeoutError when none comes within ``timeout`` (10 minutes)."""
        import time
        limit = 600.0 if timeout is None else seconds(timeout, allow_none=False)
        deadline = time.monotonic() + limit
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError()
            event = self._call("qmp_next_event", timeout=remaining)
            if event is None:
                raise TimeoutError()
            if event_filter(event):
                return event


class NspawnMachine(_VMMachine):
    """A systemd-nspawn container (nixpkgs' ``NspawnMachine``)."""


class RemoteMachine(BaseMachine):
    """An existing host driven over ssh (Vouch's ``ssh`` backend)."""

    def crash(self) -> None:
        self._call("crash")

    def reboot(self) -> None:
        self._call("reboot")

    def forward_port(self, host_port: int | None = 8080, guest_port: int = 80) -> int:
        return self._call("forward_port", host_port=None if host_port is None else int(host_port), guest_port=int(guest_port))


class MicroVMMachine(_VMMachine):
    """A firecracker or cloud-hypervisor microVM (Vouch's own; no QEMU monitor)."""


_CLASSES = {"qemu": QemuMachine, "nspawn": NspawnMachine, "ssh": RemoteMachine,
            "firecracker": MicroVMMachine, "cloud-hypervisor": MicroVMMachine}


def make_machine(info: dict[str, Any], callbacks: list[Callable[[], Any]], out_dir: str | os.PathLike[str]) -> BaseMachine:
    """The object of the right class for a machine Vouch describes."""
    return _CLASSES.get(info.get("backend"), BaseMachine)(info, callbacks, out_dir)


# Before 2026 nixpkgs had one class, `Machine`.
Machine = QemuMachine
