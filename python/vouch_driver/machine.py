"""Machine objects with the nixpkgs driver's method names, signatures,
defaults and return values, each forwarding to Vouch's Machine."""

import os
import re
import shlex

from .bridge import NotSupportedByVouch, bridge

# Python driver methods Vouch does not implement (yet).  Calling one raises
# NotSupportedByVouch naming it, instead of an AttributeError.
UNSUPPORTED = [
    "screenshot", "get_screen_text", "get_screen_text_variants", "wait_for_text",
    "send_chars", "send_console", "wait_for_qmp_event",
    "get_tty_text", "wait_until_tty_matches", "dump_tty_contents", "wait_for_x",
    "get_window_names", "wait_for_window", "console_interact", "switch_root",
]


class Machine:
    """One node of the test, as the script sees it."""

    def __init__(self, name, callbacks):
        self.name = name
        self._callbacks = callbacks

    def __repr__(self):
        return f"<Machine '{self.name}'>"

    def _call(self, method, **args):
        for callback in self._callbacks:
            callback()
        return bridge().call(method, machine=self.name, **args)

    def __getattr__(self, attr):
        if attr in UNSUPPORTED:
            def unsupported(*args, **kwargs):
                raise NotSupportedByVouch(attr)
            return unsupported
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{attr}'")

    # -- state ---------------------------------------------------------------

    @property
    def booted(self):
        return bridge().call("booted", machine=self.name)

    @property
    def connected(self):
        return self.booted

    def is_up(self):
        return bridge().call("is_up", machine=self.name)

    def log(self, msg):
        bridge().call("log", message=str(msg), level="info", machine_name=self.name)

    def nested(self, msg, attrs=None):
        from .symbols import _Nested
        return _Nested(str(msg), self.name)

    # -- lifecycle -----------------------------------------------------------

    def start(self, allow_reboot=False):
        """Boots the machine; with allow_reboot, a reboot in the guest resets it instead of ending it."""
        self._call("start", allow_reboot=bool(allow_reboot))

    def shutdown(self):
        self._call("shutdown")

    def crash(self):
        self._call("crash")

    def reboot(self):
        self._call("reboot")

    def wait_for_shutdown(self):
        self._call("wait_for_shutdown")

    def release(self):
        self._call("crash")

    # -- commands ------------------------------------------------------------

    def execute(self, command, check_return=True, check_output=True, timeout=900):
        status, output = self._call(
            "execute", command=command, timeout=timeout,
            tolerate_loss=not (check_return and check_output))
        if not check_output:
            return (-2, "")
        if not check_return:
            return (-1, output)
        return (status, output)

    def succeed(self, *commands, timeout=None):
        return self._call("succeed", commands=[str(c) for c in commands], timeout=timeout)

    def fail(self, *commands, timeout=None):
        return self._call("fail", commands=[str(c) for c in commands], timeout=timeout)

    def wait_until_succeeds(self, command, timeout=900):
        return self._call("wait_until_succeeds", command=command, timeout=timeout)

    def wait_until_fails(self, command, timeout=900):
        return self._call("wait_until_fails", command=command, timeout=timeout)

    def sleep(self, secs):
        self._call("sleep", seconds=float(secs))

    # -- waits ---------------------------------------------------------------

    def wait_for_unit(self, unit, user=None, timeout=900):
        self._call("wait_for_unit", unit=unit, user=user, timeout=timeout)

    def wait_for_file(self, filename, timeout=900):
        self._call("wait_for_file", path=filename, timeout=timeout)

    def wait_for_open_port(self, port, addr="localhost", timeout=900):
        self._call("wait_for_open_port", port=int(port), addr=addr, timeout=timeout)

    def wait_for_closed_port(self, port, addr="localhost", timeout=900):
        self._call("wait_for_closed_port", port=int(port), addr=addr, timeout=timeout)

    def wait_for_open_unix_socket(self, addr, is_datagram=False, timeout=900):
        self._call("wait_for_open_unix_socket", path=addr, is_datagram=bool(is_datagram), timeout=timeout)

    def wait_for_console_text(self, regex, timeout=None):
        return self._call("wait_for_console_text", regex=regex, timeout=timeout)

    def get_console_log(self):
        return self._call("get_console_log")

    # -- systemd -------------------------------------------------------------

    def systemctl(self, q, user=None):
        status, output = self._call("systemctl", query=q, user=user)
        return (status, output)

    def get_unit_info(self, unit, user=None):
        return self._call("get_unit_info", unit=unit, user=user)

    def get_unit_property(self, unit, property, user=None):
        return self._call("get_unit_property", unit=unit, property=property, user=user)

    def require_unit_state(self, unit, require_state="active"):
        self._call("require_unit_state", unit=unit, state=require_state)

    def start_job(self, jobname, user=None):
        status, output = self._call("start_job", unit=jobname, user=user)
        return (status, output)

    def stop_job(self, jobname, user=None):
        status, output = self._call("stop_job", unit=jobname, user=user)
        return (status, output)

    # -- files ---------------------------------------------------------------

    def copy_from_host(self, source, target):
        self._call("copy_from_host", source=os.path.abspath(str(source)), target=str(target))

    def copy_from_host_via_shell(self, source, target):
        import base64
        with open(source, "rb") as fh:
            content = base64.b64encode(fh.read()).decode()
        target = str(target)
        self.succeed(f"mkdir -p \"$(dirname {shlex.quote(target)})\"",
                     f"echo -n {content} | base64 -d > {shlex.quote(target)}")

    def copy_from_machine(self, source, target_dir=""):
        self._call("copy_from_machine", source=str(source), target_dir=str(target_dir))

    def copy_from_vm(self, source, target_dir=""):
        self.copy_from_machine(source, target_dir)

    # -- network, keys, snapshots ---------------------------------------------

    def block(self):
        self._call("block")

    def unblock(self):
        self._call("unblock")

    def forward_port(self, host_port=8080, guest_port=80):
        return self._call("forward_port", host_port=None if host_port is None else int(host_port), guest_port=int(guest_port))

    def send_key(self, key, delay=0.01, log=True):
        self._call("send_key", key=key)

    def send_monitor_command(self, command):
        return self._call("send_monitor_command", command=command)

    def snapshot_create(self, name):
        self._call("snapshot_create", name=str(name))

    def snapshot_restore(self, name):
        self._call("snapshot_restore", name=str(name))

    # -- interactive ---------------------------------------------------------

    def shell_interact(self, address=None):
        from .interact import shell_interact
        shell_interact(self)
