"""A small JSON parser that keeps source positions.

serde_json (which Firecracker and cloud-hypervisor use) reports errors as
"<what> at line L column C", where C counts the characters consumed on that
line when the error was noticed. Python's json module cannot tell us where a
key or value ended, so this parser does, and its syntax errors use serde_json's
wording for the common cases."""
import json
import re

_NUM = re.compile(r"-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?")
_WS = " \t\n\r"


class Node:
    __slots__ = ("kind", "value", "start", "end", "entries")

    def __init__(self, kind, value, start, end, entries=None):
        self.kind, self.value, self.start, self.end = kind, value, start, end
        self.entries = entries  # object: [(key, key_end, Node)]; array: [Node]


class JsonError(Exception):
    def __init__(self, msg, text, pos):
        line, col = line_col(text, pos)
        super().__init__("%s at line %d column %d" % (msg, line, col))


def line_col(text, pos):
    line = text.count("\n", 0, pos) + 1
    last = text.rfind("\n", 0, pos)
    return line, pos - (last + 1)


def parse(text):
    p = _Parser(text)
    node = p.value()
    p.ws()
    if p.i < len(text):
        raise JsonError("trailing characters", text, p.i + 1)
    return node


class _Parser:
    def __init__(self, text):
        self.t, self.i = text, 0

    def ws(self):
        while self.i < len(self.t) and self.t[self.i] in _WS:
            self.i += 1

    def fail(self, msg, pos=None):
        raise JsonError(msg, self.t, self.i if pos is None else pos)

    def value(self):
        self.ws()
        t, i = self.t, self.i
        if i >= len(t):
            self.fail("EOF while parsing a value")
        c = t[i]
        if c == "{":
            return self.obj()
        if c == "[":
            return self.arr()
        if c == '"':
            s = self.string()
            return Node("string", s, i, self.i)
        for word, val, kind in (("true", True, "bool"), ("false", False, "bool"), ("null", None, "null")):
            if t.startswith(word, i):
                self.i = i + len(word)
                return Node(kind, val, i, self.i)
        m = _NUM.match(t, i)
        if m:
            self.i = m.end()
            return Node("number", json.loads(m.group(0)), i, self.i)
        self.fail("expected value", i + 1)

    def string(self):
        try:
            s, end = json.decoder.scanstring(self.t, self.i + 1)
        except json.JSONDecodeError:
            self.fail("EOF while parsing a string", len(self.t))
        self.i = end
        return s

    def obj(self):
        start, entries = self.i, []
        self.i += 1
        self.ws()
        if self.t.startswith("}", self.i):
            self.i += 1
            return Node("object", {}, start, self.i, entries)
        while True:
            self.ws()
            if self.i >= len(self.t):
                self.fail("EOF while parsing an object")
            if self.t[self.i] != '"':
                self.fail("key must be a string", self.i + 1)
            key = self.string()
            key_end = self.i
            self.ws()
            if not self.t.startswith(":", self.i):
                self.fail("expected `:`", self.i + 1)
            self.i += 1
            entries.append((key, key_end, self.value()))
            self.ws()
            if self.t.startswith(",", self.i):
                self.i += 1
                continue
            if self.t.startswith("}", self.i):
                self.i += 1
                return Node("object", {k: n for k, _, n in entries}, start, self.i, entries)
            if self.i >= len(self.t):
                self.fail("EOF while parsing an object")
            self.fail("expected `,` or `}`", self.i + 1)

    def arr(self):
        start, items = self.i, []
        self.i += 1
        self.ws()
        if self.t.startswith("]", self.i):
            self.i += 1
            return Node("array", [], start, self.i, items)
        while True:
            items.append(self.value())
            self.ws()
            if self.t.startswith(",", self.i):
                self.i += 1
                continue
            if self.t.startswith("]", self.i):
                self.i += 1
                return Node("array", items, start, self.i, items)
            if self.i >= len(self.t):
                self.fail("EOF while parsing a list")
            self.fail("expected `,` or `]`", self.i + 1)


def plain(node):
    """The Python value of a node (dicts keep the last duplicate, like json)."""
    if node.kind == "object":
        return {k: plain(n) for k, _, n in node.entries}
    if node.kind == "array":
        return [plain(n) for n in node.entries]
    return node.value
