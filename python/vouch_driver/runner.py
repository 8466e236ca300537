"""What `python3 -m vouch_driver run SCRIPT` (a nixpkgs test script) and
`python3 -m vouch_driver repl [SCRIPT]` (the interactive session) do.  Both
need the bridge on fd 3, so run them through `vouch run` / `vouch repl`,
not by hand."""

import os
import sys

from .bridge import bridge, format_failure, set_script_path
from .symbols import Driver


def _report_failure(exc, script):
    text, where = format_failure(exc, script)
    first = str(exc).split("\n", 1)[0]
    if where is not None:
        # Vouch's own errors start with the script location, which the report names anyway.
        first = first.removeprefix(f"{where.filename}:{where.lineno}: ")
    try:
        bridge().call("script_failed", message=f"{type(exc).__name__}: {first}", traceback=text,
                      file=where.filename if where else None, line=where.lineno if where else None)
    except Exception:
        sys.stderr.write(text + "\n")


def run(script):
    set_script_path(script)
    driver = Driver(bridge().hello(), script)
    code = compile(driver.tests, script, "exec")
    try:
        exec(code, driver.symbols())
    except SystemExit as e:
        if e.code not in (None, 0):
            _report_failure(e, script)
            return 1
    except KeyboardInterrupt:
        return 130
    except BaseException as e:  # noqa: BLE001 - every failure must reach Vouch
        _report_failure(e, script)
        return 1
    return 0


def repl(script):
    import code
    try:
        import readline  # noqa: F401 - line editing and history for input()
    except ImportError:
        pass
    set_script_path(script)
    driver = Driver(bridge().hello(), script)
    symbols = driver.symbols()
    names = ", ".join(sorted(k for k, v in symbols.items() if k in {m.name for m in driver.machines} or k == "machine"))
    banner = (
        "Vouch interactive session (Python, nixpkgs driver names).\n"
        f"machines: {names or '(none)'}; nothing is booted until you ask.\n"
        "start_all(), <machine>.succeed(\"...\"), <machine>.shell_interact(), "
        + ("test_script() runs the test script, " if script else "")
        + "serial_stdout_on() shows the guests' consoles.\n"
        "Ctrl-C stops the running call; Ctrl-D ends the session and tears everything down."
    )
    console = code.InteractiveConsole(symbols, filename="<vouch>")
    console.interact(banner=banner, exitmsg="ending the session")
    return 0


def main(argv):
    if len(argv) < 2 or argv[1] not in ("run", "repl") or (argv[1] == "run" and len(argv) != 3):
        sys.stderr.write(__doc__.strip() + "\n")
        return 2
    if "VOUCH_BRIDGE_FD" not in os.environ:
        sys.stderr.write("vouch_driver: no bridge to Vouch (start this with `vouch run` or `vouch repl`)\n")
        return 2
    script = argv[2] if len(argv) > 2 else None
    return run(script) if argv[1] == "run" else repl(script)

