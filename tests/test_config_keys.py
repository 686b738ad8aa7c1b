"""Every config key does something: a key that nothing reads is a bug.

A key is read when code outside ``meltica/config.py`` accesses an attribute of
its name (``cfg.bus.capacity``, ``m.silence_timeout_s``), or a property of its
section that reads it (``ws_base_url`` reads ``market_data_only``).  The check is by
name, so it is a floor, not a proof, but it fails as soon as a key is added (or
its last reader removed) with nothing reading it.  The only exceptions are the
keys in ``meltica.config.RESERVED``, which refuse every value but their default
(tests/test_config.py checks that).
"""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

import meltica
from meltica.config import RESERVED, Config, _Section

PACKAGE = Path(meltica.__file__).resolve().parent


def _leaf_keys(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted path, section class name, field name) of every leaf key."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        path = f"{prefix}{f.name}"
        if isinstance(hint, type) and issubclass(hint, _Section):
            out.extend(_leaf_keys(hint, path + "."))
        else:
            out.append((path, cls.__name__, f.name))
    return out


def _attributes_read() -> set[str]:
    names: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        if path.name == "config.py" and path.parent == PACKAGE:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        names.update(n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute))
    # keys read through a section's derived property (``ws_base_url`` reads
    # ``market_data_only``) count when the property itself is read
    tree = ast.parse((PACKAGE / "config.py").read_text(encoding="utf-8"))
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        for fn in cls.body:
            if (
                isinstance(fn, ast.FunctionDef)
                and any(isinstance(d, ast.Name) and d.id == "property" for d in fn.decorator_list)
                and fn.name in names
            ):
                names.update(
                    n.attr
                    for n in ast.walk(fn)
                    if isinstance(n, ast.Attribute)
                    and isinstance(n.value, ast.Name)
                    and n.value.id == "self"
                )
    for path in PACKAGE.rglob("*.pyx"):
        # compiled modules read config values handed to them; count attribute
        # spellings there too (a rough scan: Cython is not Python syntax)
        text = path.read_text(encoding="utf-8")
        names.update(part.split("(")[0] for part in text.split(".")[1:])
    return names


def test_every_config_key_is_read_or_reserved() -> None:
    read = _attributes_read()
    unread = [
        path
        for path, owner, name in _leaf_keys(Config)
        if name not in read and name not in RESERVED.get(owner, ())
    ]
    assert not unread, f"config keys that nothing reads: {unread}"


def test_reserved_keys_are_really_unread_keys() -> None:
    # a reserved key that code has started to read must leave RESERVED (and
    # then accept non-default values): keep the list honest in both directions
    read = _attributes_read()
    leaves = {(owner, name) for _, owner, name in _leaf_keys(Config)}
    # a name that another section's live key also has (snapshot.backend and
    # bus.backend) is read for that key: by name the two cannot be told apart
    live = {name for owner, name in leaves if name not in RESERVED.get(owner, ())}
    for owner, names in RESERVED.items():
        for name in names:
            assert (owner, name) in leaves, f"{owner}.{name} is not a config key"
            assert name in live or name not in read, (
                f"{owner}.{name} is read now: drop it from RESERVED"
            )
