"""The Lua scripts of the worker, the reader and the commands, as ``.lua`` files of this package.

Each file starts with what it takes (KEYS, ARGV) and what it replies; a line ``-- include: <name>`` is replaced by
that file (the parts scripts share: ``evict_tag.lua``, ``apply_op.lua``, ``checkpoint_cas.lua``,
``hset_args.lua``). Multi-outcome
scripts reply with names (``'OK'``, ``'REWIND'``, ``'HIT'``, ``'STORED'``, ...), listed here. Pure: the standard
library only.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

_INCLUDE = re.compile(r"^-- include: ([a-z_]+)\n", re.M)

# apply.lua
OK, DUP, REWIND, LOST, FENCED = "OK", "DUP", "REWIND", "LOST", "FENCED"
# flush_step.lua and evict_tags.lua: also OK and FENCED
LOCK_LOST = "LOCK_LOST"
# lookup.lua
HIT, BYPASS, LEASE, WAIT = "HIT", "BYPASS", "LEASE", "WAIT"
# fill.lua: also LOST
STORED, RULE_MISMATCH, SCHEMA_CHANGED = "STORED", "RULE_MISMATCH", "SCHEMA_CHANGED"


@functools.cache
def source(name: str) -> str:
    """The text of ``<name>.lua``, includes expanded."""
    text = resources.files(__package__).joinpath(f"{name}.lua").read_text(encoding="utf-8")
    return _INCLUDE.sub(lambda m: source(m.group(1)), text)


def names() -> list[str]:
    """Every script of the package (tests run each against a real Redis)."""
    return sorted(p.name[:-4] for p in resources.files(__package__).iterdir() if p.name.endswith(".lua"))


def reply_name(raw: object) -> str:
    """A script's reply name as text (redis-py hands bulk strings back as bytes)."""
    return raw.decode() if isinstance(raw, bytes) else str(raw)
