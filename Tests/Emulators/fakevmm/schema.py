"""Request bodies checked the way serde (derive + serde_json) checks them.

A schema is a tree of the small type objects below. check() walks a
jsonpos.Node against it and raises SchemaError carrying serde_json's wording
("missing field `x`", "unknown field `y`, expected one of ...", "invalid
type: string \"2\", expected u8") plus "at line L column C", so clients see
the same fault text they would see from the real VMM."""
from . import jsonpos


class SchemaError(Exception):
    pass


def _fail(msg, text, pos):
    line, col = jsonpos.line_col(text, pos)
    raise SchemaError("%s at line %d column %d" % (msg, line, col))


def _one_of(what, names):
    # serde's de::OneOf display, used for unknown fields and variants.
    q = ["`%s`" % n for n in names]
    if not q:
        return "there are no %ss" % what
    if len(q) == 1:
        return "expected %s" % q[0]
    if len(q) == 2:
        return "expected %s or %s" % tuple(q)
    return "expected one of " + ", ".join(q)


def _unexpected(node):
    if node.kind == "bool":
        return "boolean `%s`" % ("true" if node.value else "false")
    if node.kind == "number":
        if isinstance(node.value, float):
            v = repr(node.value)
            return "floating point `%s`" % v
        return "integer `%d`" % node.value
    if node.kind == "string":
        return 'string "%s"' % node.value
    if node.kind == "null":
        return "null"
    return "map" if node.kind == "object" else "sequence"


def _wrong(node, expected, text):
    # serde_json notices a wrong scalar after reading it, a wrong container at
    # its opening bracket.
    pos = node.end if node.kind not in ("object", "array") else node.start + 1
    _fail("invalid type: %s, expected %s" % (_unexpected(node), expected), text, pos)


class Int:
    def __init__(self, name, lo, hi):
        self.name, self.lo, self.hi = name, lo, hi

    def check(self, node, text):
        if node.kind != "number" or isinstance(node.value, float):
            _wrong(node, self.name, text)
        if not self.lo <= node.value <= self.hi:
            _fail("invalid value: integer `%d`, expected %s" % (node.value, self.name), text, node.end)
        return node.value


U8, U16, U32 = Int("u8", 0, 255), Int("u16", 0, 65535), Int("u32", 0, 2**32 - 1)
U64 = USIZE = Int("u64", 0, 2**64 - 1)
USIZE = Int("usize", 0, 2**64 - 1)


class Scalar:
    def __init__(self, kind, expected):
        self.kind, self.expected = kind, expected

    def check(self, node, text):
        if node.kind != self.kind:
            _wrong(node, self.expected, text)
        return node.value


BOOL = Scalar("bool", "a boolean")
STR = Scalar("string", "a string")
PATH = Scalar("string", "path string")


class Enum:
    """A Rust enum of unit variants, spelled as JSON strings."""

    def __init__(self, name, variants):
        self.name, self.variants = name, variants

    def check(self, node, text):
        if node.kind != "string":
            _wrong(node, "enum " + self.name, text)
        if node.value not in self.variants:
            _fail("unknown variant `%s`, %s" % (node.value, _one_of("variant", self.variants)), text, node.end)
        return node.value


class Opt:
    def __init__(self, inner):
        self.inner = inner

    def check(self, node, text):
        return None if node.kind == "null" else self.inner.check(node, text)


class Seq:
    def __init__(self, inner):
        self.inner = inner

    def check(self, node, text):
        if node.kind != "array":
            _wrong(node, "a sequence", text)
        return [self.inner.check(n, text) for n in node.entries]


class MapOf:
    def __init__(self, inner):
        self.inner = inner

    def check(self, node, text):
        if node.kind != "object":
            _wrong(node, "a map", text)
        return {k: self.inner.check(n, text) for k, _, n in node.entries}


class Struct:
    """fields: [(name, type, required)]. Optional fields absent from the body
    get the given default (serde's #[serde(default)] / Option = None)."""

    def __init__(self, name, fields, deny_unknown=True):
        self.name, self.fields, self.deny_unknown = name, fields, deny_unknown

    def check(self, node, text):
        if node.kind != "object":
            _wrong(node, "struct " + self.name, text)
        types = {f[0]: f for f in self.fields}
        out = {}
        for key, key_end, val in node.entries:
            if key not in types:
                if self.deny_unknown:
                    _fail("unknown field `%s`, %s" % (key, _one_of("field", [f[0] for f in self.fields])),
                          text, key_end)
                continue
            if key in out:
                _fail("duplicate field `%s`" % key, text, key_end)
            out[key] = types[key][1].check(val, text)
        for f in self.fields:
            if f[0] not in out:
                if f[2] is True:
                    _fail("missing field `%s`" % f[0], text, node.end)
                out[f[0]] = f[3] if len(f) > 3 else None
        return out


def parse_body(raw, schema):
    """Bytes -> validated dict, or SchemaError with serde_json's message."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SchemaError("invalid unicode code point at line 1 column 1")
    try:
        node = jsonpos.parse(text)
    except jsonpos.JsonError as e:
        raise SchemaError(str(e))
    return schema.check(node, text)
