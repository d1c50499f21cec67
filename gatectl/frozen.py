"""Cheap construction and copies of frozen, slotted dataclasses, for the hot folds.

``dataclasses.replace`` looks every field up, builds keyword arguments and calls the
generated ``__init__``, which sets each field through ``object.__setattr__``: about 9 µs
for a passage record of 22 fields, once per journaled event on the lane and at the
central. The functions made here write each slot straight through its descriptor (the
same bypass of the frozen ``__setattr__`` that the dataclass's own ``__init__`` makes),
in straight-line code generated once per class and field set: a copy with one field
changed costs about a sixth.

Only for frozen, slotted dataclasses without ``__post_init__`` or init-only fields, where
setting every field is all that ``__init__`` does (checked when a function is made).
The objects made are ordinary instances: equal, hashed and printed as the class says.
"""

from __future__ import annotations

import dataclasses
import keyword
from typing import Any, Callable

__all__ = ["maker", "evolver"]


def _slots(cls: type) -> tuple[str, ...]:
    if not dataclasses.is_dataclass(cls) or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__} is not a slotted dataclass")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} has a __post_init__: its __init__ does more than set fields")
    params = cls.__dataclass_params__  # type: ignore[attr-defined]
    if not params.frozen:
        raise TypeError(f"{cls.__name__} is not frozen")
    fields = dataclasses.fields(cls)
    if any(not f.init for f in fields):
        raise TypeError(f"{cls.__name__} has fields outside __init__")
    names = tuple(f.name for f in fields)
    if any(keyword.iskeyword(n) or not n.isidentifier() or n in ("self", "_new", "_cls") or n.startswith(("_set_", "_v_"))
           for n in names):
        raise TypeError(f"{cls.__name__}: a field name the generated code cannot take as a name")
    return names


def _compile(name: str, args: list[str], body: list[str], env: dict[str, Any]) -> Callable[..., Any]:
    src = f"def {name}({', '.join(args)}):\n" + "".join(f"    {line}\n" for line in body)
    ns: dict[str, Any] = {}
    exec(compile(src, f"<gatectl.frozen {name}>", "exec"), env, ns)  # noqa: S102 - generated from field names
    return ns[name]


def _setters(cls: type, names: tuple[str, ...]) -> dict[str, Any]:
    env: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    for n in names:
        env[f"_set_{n}"] = getattr(cls, n).__set__  # the slot's own descriptor: no frozen check
    return env


def maker(cls: type) -> Callable[..., Any]:
    """``make(v1, v2, ...)``: a new instance from every field's value, positionally in
    field order (no defaults: the caller gives all)."""
    names = _slots(cls)
    body = ["self = _new(_cls)"] + [f"_set_{n}(self, {n})" for n in names] + ["return self"]
    return _compile(f"make_{cls.__name__}", list(names), body, _setters(cls, names))


def evolver(cls: type, *changed: str) -> Callable[..., Any]:
    """``evolve(obj, v1, ...)``: a copy of ``obj`` with the fields ``changed`` (in that
    order) set to the values given, the same as ``dataclasses.replace(obj, name=v, ...)``."""
    names = _slots(cls)
    unknown = [c for c in changed if c not in names]
    if unknown or len(set(changed)) != len(changed):
        raise TypeError(f"{cls.__name__}: not its fields, or repeated: {changed}")
    args = [f"_v_{c}" for c in changed]
    body = ["new = _new(_cls)"]
    body += [f"_set_{n}(new, {'_v_' + n if n in changed else 'obj.' + n})" for n in names]
    body.append("return new")
    return _compile(f"evolve_{cls.__name__}_{'_'.join(changed)}", ["obj", *args], body, _setters(cls, names))
