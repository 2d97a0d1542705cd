"""A cheaper `dataclasses.replace` for the frozen state types the core copies on every change.

`dataclasses.replace` walks `fields()` and calls the generated `__init__` with every field by
keyword: for `Run` (~40 fields) and ~10 copies per step it was the planner's costliest frame.
This builds one function per class that copies the fields straight into a new instance. It is
only used where `__init__` would do nothing but assign: classes with `__post_init__`, `InitVar`s
or fields outside `__init__` go through `dataclasses.replace` unchanged.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["replace"]

T = TypeVar("T")

_Copier = Callable[[Any, dict[str, Any]], Any]
_COPIERS: dict[type, _Copier] = {}


def replace(obj: T, /, **changes: Any) -> T:
    """`dataclasses.replace(obj, **changes)`, same result, without the per-field overhead."""
    cls = type(obj)
    copier = _COPIERS.get(cls)
    if copier is None:
        copier = _COPIERS[cls] = _copier(cls)
    result: T = copier(obj, changes)
    return result


def _copier(cls: type) -> _Copier:
    names = tuple(f.name for f in dataclasses.fields(cls))
    init = tuple(inspect.signature(cls).parameters)
    if hasattr(cls, "__post_init__") or init != names or not all(n.isidentifier() for n in names):
        return lambda obj, changes: dataclasses.replace(obj, **changes)
    known = frozenset(names)
    # Every field is copied, then the changed ones overwritten: fewer lookups than asking
    # `changes` about each field, since a copy usually changes one or two.
    lines = [
        "def copy(obj, changes):",
        "    if not known.issuperset(changes):",
        "        return dataclasses.replace(obj, **changes)  # raises the usual TypeError",
        "    new = new_instance(cls)",
        *(f"    set_field(new, {name!r}, obj.{name})" for name in names),
        "    for name, value in changes.items():",
        "        set_field(new, name, value)",
        "    return new",
    ]
    scope: dict[str, Any] = {
        "cls": cls,
        "known": known,
        "dataclasses": dataclasses,
        "new_instance": object.__new__,
        "set_field": object.__setattr__,
    }
    exec("\n".join(lines), scope)
    copy: _Copier = scope["copy"]
    return copy
