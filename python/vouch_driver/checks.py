"""The checks nixpkgs makes on a test script before anything boots: pyflakes
with the driver's globals as builtins, and mypy against typed stubs of the
globals the script sees.

    python3 -m vouch_driver.checks --hello JSON [--skip-lint] [--skip-type-check]
        [--missing-tools fail|warn] [--name SHOWN] SCRIPT
    python3 -m vouch_driver.checks --hello JSON --print-stubs

The stubs are generated, not written by hand: every class of this package
with its annotated methods (the signatures the script calls), and every
global of ``Driver.test_symbols()`` for the machines and VLANs in
``--hello`` (the shape of the bridge's hello: ``machines`` with name and
backend, ``vlans``).  Problems are printed as ``SCRIPT:LINE: message``, with
the script's own line numbers.  Exit status: 0 clean, 1 problems, 3 a tool
is missing with ``--missing-tools fail``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import enum
import hashlib
import importlib.util
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import types
from typing import Any

from . import bridge, durations, machine, qmp, symbols

STUB_MODULE = "vouch_test_symbols"
# What the script is type-checked after: one line, so line N of the checked
# file is line N - 1 of the script.
PREAMBLE = f"from {STUB_MODULE} import *  # noqa\n"
APT_PACKAGES = {"pyflakes": "python3-pyflakes", "mypy": "mypy"}
_OUR_MODULES = (bridge, durations, qmp, machine, symbols)
_KEPT_DUNDERS = {"__init__", "__enter__", "__exit__", "__bool__", "__str__", "__repr__", "__iter__"}


def _our_classes() -> list[type]:
    classes: list[type] = []
    for module in _OUR_MODULES:
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and cls not in classes:
                classes.append(cls)
    return classes


class _Writer:
    """Stubs of this package's modules (a stub package ``vouch_driver``, so
    that ``test_driver``'s re-exports resolve to the same classes) and of
    the script's globals."""

    HEADER = ["from __future__ import annotations", "import datetime as dt", "import enum", "import os", "import pathlib",
              "import unittest", "from collections.abc import Callable, Iterable, Iterator",
              "from contextlib import AbstractContextManager", "from typing import Any, NoReturn"]

    def __init__(self) -> None:
        self.classes = _our_classes()

    def type_name(self, cls: type) -> str:
        if cls in self.classes or cls.__module__ == "builtins":
            return cls.__name__
        if cls.__module__ == "datetime":
            return f"dt.{cls.__qualname__}"
        return f"{cls.__module__.split('.')[0]}.{cls.__qualname__}"

    @staticmethod
    def signature(function: Any, name: str) -> str:
        try:
            sig = inspect.signature(function)
        except (TypeError, ValueError):
            return f"def {name}(*args: Any, **kwargs: Any) -> Any: ..."
        out: list[str] = []
        star_done = False
        for p in sig.parameters.values():
            text = p.name
            if p.annotation is not inspect.Parameter.empty:
                text += f": {p.annotation}"
            if p.default is not inspect.Parameter.empty:
                text += " = ..."
            if p.kind is p.VAR_POSITIONAL:
                text, star_done = "*" + text, True
            elif p.kind is p.VAR_KEYWORD:
                text = "**" + text
            elif p.kind is p.KEYWORD_ONLY and not star_done:
                out.append("*")
                star_done = True
            out.append(text)
        ret = sig.return_annotation
        returns = f" -> {ret}" if ret is not inspect.Signature.empty else ""
        return f"def {name}({', '.join(out)}){returns}: ..."

    def class_stub(self, cls: type) -> list[str]:
        bases = [self.type_name(b) for b in cls.__bases__ if b is not object]
        lines = [f"class {cls.__name__}{'(' + ', '.join(bases) + ')' if bases else ''}:"]
        for name, annotation in cls.__dict__.get("__annotations__", {}).items():
            lines.append(f"    {name}: {annotation}")
        for name, member in cls.__dict__.items():
            if name.startswith("_") and name not in _KEPT_DUNDERS:
                continue
            if isinstance(member, property):
                lines += ["    @property", "    " + self.signature(member.fget, name)]
            elif isinstance(member, staticmethod):
                lines += ["    @staticmethod", "    " + self.signature(member.__func__, name)]
            elif inspect.isfunction(member):
                lines.append("    " + self.signature(member, name))
            elif issubclass(cls, enum.Enum) and isinstance(member, cls):
                lines.append(f"    {name} = {member.value!r}")
        if cls is machine.BaseMachine:
            # Calls Vouch refuses at run time (NotSupportedByVouch), typed as nixpkgs has them.
            lines += [f"    def {name}(self, *args: Any, **kwargs: Any) -> Any: ..." for name in machine.UNSUPPORTED]
        return lines if len(lines) > 1 else lines + ["    ..."]

    def imports(self, besides: Any = None, export: set[str] = frozenset()) -> list[str]:
        """The header, and every class of the other modules by name."""
        lines = list(self.HEADER)
        for cls in self.classes:
            if cls.__module__ != getattr(besides, "__name__", None):
                alias = f" as {cls.__name__}" if cls.__name__ in export else ""
                lines.append(f"from {cls.__module__} import {cls.__name__}{alias}")
        return lines

    def module_stub(self, module: Any) -> str:
        body: list[str] = []
        for name, value in vars(module).items():
            if inspect.isclass(value) and value.__module__ == module.__name__:
                body += (self.class_stub(value) if value.__name__ == name else [f"{name} = {value.__name__}"]) + [""]
            elif inspect.isfunction(value) and value.__module__ == module.__name__ and not name.startswith("_"):
                body.append(self.signature(value, name))
            elif not name.startswith("_") and isinstance(value, (int, float, str, list, dt.timedelta)):
                kind = "list[str]" if isinstance(value, list) else self.type_name(type(value))
                body.append(f"{name}: {kind}")
        return "\n".join(self.imports(module) + [""] + body) + "\n"

    def global_stub(self, name: str, value: Any, driver: symbols.Driver) -> str:
        if isinstance(value, types.ModuleType):
            return f"import {value.__name__} as {name}"
        if inspect.isclass(value):
            if value in self.classes:
                return "" if value.__name__ == name else f"{name} = {value.__name__}"
            return f"from {value.__module__} import {value.__qualname__} as {name}"
        if inspect.ismethod(value) or inspect.isfunction(value):
            return self.signature(value, name)
        declared = _declared_type(type(driver), name)
        if declared is not None:
            return f"{name}: {declared}"
        if type(value) in self.classes:
            return f"{name}: {type(value).__name__}"
        return f"{name}: Any"

    def files(self, driver: symbols.Driver) -> tuple[dict[str, str], list[str]]:
        """Relative path to text, for every stub file; and the global names."""
        files = {"vouch_driver/__init__.pyi": ""}
        for module in _OUR_MODULES:
            files[module.__name__.replace(".", "/") + ".pyi"] = self.module_stub(module)
        names = list(driver.test_symbols().items())
        exported = {name for name, value in names if inspect.isclass(value) and value.__name__ == name}
        body = [line for name, value in names if (line := self.global_stub(name, value, driver))]
        files[STUB_MODULE + ".pyi"] = "\n".join(self.imports(export=exported) + [""] + body) + "\n"
        return files, [name for name, _ in names]


def _declared_type(cls: type, name: str) -> str | None:
    """The annotation of ``driver.<name>`` (an attribute or a property)."""
    member = getattr(cls, name, None)
    if isinstance(member, property) and member.fget is not None:
        ret = inspect.signature(member.fget).return_annotation
        return None if ret is inspect.Signature.empty else str(ret)
    for klass in cls.__mro__:
        if name in klass.__dict__.get("__annotations__", {}):
            return str(klass.__annotations__[name])
    return None


def stubs(hello: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """The stub files (relative path to text) and the script's global names for ``hello``."""
    info = {"outputDirectory": "/nonexistent", "globalTimeout": 3600.0, "machines": [], "vlans": []}
    info.update(hello)
    driver = symbols.Driver(info, None)
    return _Writer().files(driver)


def _tool(module: str, executables: list[str]) -> list[str] | None:
    """How to run ``python -m module`` or its executable; None if missing."""
    if importlib.util.find_spec(module) is not None:
        return [sys.executable, "-m", module]
    found = next((path for name in executables if (path := shutil.which(name))), None)
    return [found] if found else None


_LINE = re.compile(r"^(?P<file>.*?):(?P<line>\d+):(?:\d+:)?\s*(?P<message>.*)$")


def _relabel(output: str, checked: str, shown: str, offset: int, base: str = ".") -> list[str]:
    """Tool output lines as ``shown:LINE: message``, LINE the script's own."""
    problems = []
    for raw in output.splitlines():
        match = _LINE.match(raw)
        if match and os.path.abspath(os.path.join(base, match["file"])) == os.path.abspath(checked):
            line = max(1, int(match["line"]) - offset)
            problems.append(f"{shown}:{line}: {match['message']}")
        elif raw.strip():
            problems.append(raw)
    return problems


def cache_directory() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "vouch", "mypy")


def check(script: str, hello: dict[str, Any], shown: str | None = None, lint: bool = True,
          type_check: bool = True, missing_tools: str = "fail") -> tuple[list[str], list[str], bool]:
    """(problems, warnings, a tool was missing) for ``script``."""
    shown = shown or script
    problems: list[str] = []
    warnings: list[str] = []
    missing = False
    files, names = stubs(hello)
    with open(script, encoding="utf-8") as f:
        source = f.read()
    if lint:
        pyflakes = _tool("pyflakes", ["pyflakes3", "pyflakes"])
        if pyflakes is None:
            missing = True
            warnings.append(f"pyflakes is not installed (Debian: apt-get install {APT_PACKAGES['pyflakes']}); "
                            "the script was not linted (--skip-lint to not ask)")
        else:
            env = dict(os.environ, PYFLAKES_BUILTINS=",".join(names))
            done = subprocess.run(pyflakes + [script], env=env, capture_output=True, text=True)
            if done.returncode != 0:
                problems += _relabel(done.stdout + done.stderr, script, shown, 0)
    if type_check:
        mypy = _tool("mypy", ["mypy"])
        if mypy is None:
            missing = True
            warnings.append(f"mypy is not installed (Debian: apt-get install {APT_PACKAGES['mypy']}); "
                            "the script was not type-checked (--skip-type-check to not ask)")
        else:
            with tempfile.TemporaryDirectory(prefix="vouch-check-") as tmp:
                for path, text in files.items():
                    os.makedirs(os.path.dirname(os.path.join(tmp, path)), exist_ok=True)
                    with open(os.path.join(tmp, path), "w", encoding="utf-8") as f:
                        f.write(text)
                checked = os.path.join(tmp, "test_script_" + hashlib.sha1(script.encode()).hexdigest()[:8] + ".py")
                with open(checked, "w", encoding="utf-8") as f:
                    f.write(PREAMBLE + source)
                package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
                env = dict(os.environ, MYPYPATH=os.pathsep.join([tmp, package]))
                args = ["--no-implicit-optional", "--no-color-output", "--no-error-summary", "--show-error-codes",
                        "--hide-error-context", "--allow-redefinition",
                        "--disable-error-code", "func-returns-value", "--follow-imports=silent", "--ignore-missing-imports",
                        "--cache-dir", cache_directory(), checked]
                done = subprocess.run(mypy + args, env=env, capture_output=True, text=True, cwd=tmp)
                if done.returncode != 0:
                    problems += _relabel(done.stdout + done.stderr, checked, shown, 1, tmp)
    return problems, warnings, missing and missing_tools == "fail"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m vouch_driver.checks")
    parser.add_argument("--hello", required=True, help="JSON: machines [{name, backend}], vlans [{nr}]")
    parser.add_argument("--skip-lint", action="store_true")
    parser.add_argument("--skip-type-check", action="store_true")
    parser.add_argument("--missing-tools", choices=["fail", "warn"], default="fail")
    parser.add_argument("--name", help="the script's name in messages")
    parser.add_argument("--print-stubs", action="store_true")
    parser.add_argument("script", nargs="?")
    options = parser.parse_args(argv)
    hello = json.loads(options.hello)
    if options.print_stubs:
        files, _ = stubs(hello)
        for path, text in files.items():
            sys.stdout.write(f"# --- {path}\n{text}")
        return 0
    if options.script is None:
        parser.error("give a script")
    problems, warnings, missing = check(options.script, hello, options.name, not options.skip_lint,
                                        not options.skip_type_check, options.missing_tools)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for problem in problems:
        print(problem)
    return 1 if problems else 3 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
