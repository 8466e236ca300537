"""nixpkgs' failure texts, which scripts match on.  They are defined once,
on Vouch's side (``NixpkgsMessage``), and arrive in the bridge table; this
module only fills them in."""

from .bridge import bridge


def message(key, **values):
    """The text ``key`` of the table, with its ``{placeholders}`` filled."""
    table = bridge().table
    if table is None:
        raise RuntimeError("vouch_driver: the bridge table is not loaded yet (call hello() first)")
    return table["messages"][key].format(**{k: str(v) for k, v in values.items()})
