"""Click options generated from the config fields: each option is declared once, on its field.

``config_options(PruneConfig, CorrectionConfig, ...)`` adds one click option per field, with the
field's help, choices, default and spelling (``--round-to`` for ``round_to``); ``take(cls, kw)``
builds the config back from the command's keyword arguments. A field's old spellings (aliases)
are accepted but kept off ``--help``.
"""
from __future__ import annotations

import re
from dataclasses import MISSING, fields
from typing import Any, Callable

import click

from onnxcomp.config.options import values


class Option(click.Option):
    """A click option whose help line shows only its first (current) name, not its aliases."""

    def __init__(self, *args: Any, shown: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._shown = shown

    def get_help_record(self, ctx: click.Context):
        record = super().get_help_record(ctx)
        if record is None or len(self.opts) <= self._shown:
            return record
        names, rest = record
        hidden = [o for o in self.opts[self._shown:]]
        for o in hidden:
            names = names.replace(f", {o}", "").replace(f"{o}, ", "")
        return names, rest


def _kind(annotation: Any) -> str:
    text = str(annotation)
    for kind in ("bool", "tuple[str", "tuple[int", "float", "int", "str"):
        if kind in text:
            return kind
    return "str"


def field_option(f: Any, *, default: Any = MISSING, dest: str | None = None) -> Callable:
    """One click option for a config field."""
    meta = f.metadata
    dest = dest or f.name
    flag = "--" + dest.replace("_", "-")
    names = meta["cli"].split("/") if meta.get("cli") else [flag]
    names += [a for a in meta.get("aliases", ()) if a not in names]
    value = f.default if default is MISSING else default
    kind = _kind(f.type)
    text = meta["help"] if default is MISSING else re.sub(r"\s*\(default [^)]*\)", "", meta["help"])
    kw: dict[str, Any] = {"help": text, "hidden": meta.get("hidden", False)}  # (a "(default X)" in the
    # field's help is the field's default: another command's own default replaces it)
    if meta.get("metavar"):
        kw["metavar"] = meta["metavar"]
    shown = 2 if meta.get("cli") and len(meta["cli"].split("/")) == 2 else 1
    if kind == "bool":
        if meta.get("flag"):
            return click.option(*names, dest, is_flag=True, default=bool(value), cls=Option, shown=shown, **kw)
        pair = f"{names[0]}/--no-{names[0][2:]}"
        return click.option(pair, dest, default=value, show_default=value is not None, cls=Option, **kw)
    if meta.get("repeat"):
        return click.option(*names, dest, multiple=True, default=tuple(value or ()), cls=Option, shown=shown, **kw)
    if meta.get("choices") is not None:
        kw["type"] = click.Choice(values(meta["choices"]))
    elif meta.get("percent"):
        kw["type"] = str  # 0.01 or 1%: the config parses and checks it
    elif kind in ("int", "float"):
        kw["type"] = int if kind == "int" else float
    return click.option(*names, dest, default=value, show_default=value is not None, cls=Option, shown=shown, **kw)


def config_options(*classes: type, only: tuple[str, ...] | None = None, skip: tuple[str, ...] = (),
                   defaults: dict[str, Any] | None = None, rename: dict[str, str] | None = None) -> Callable:
    """A decorator adding every declared field of ``classes`` as an option (in declaration order).

    ``only``/``skip`` choose fields by name, ``defaults`` overrides a default for this command,
    ``rename`` gives a field another option name here (e.g. compress's ``--bit-allocation``).
    """
    defaults, rename = dict(defaults or {}), dict(rename or {})
    opts = []
    seen: set[str] = set()
    for cls in classes:
        for f in fields(cls):
            dest = rename.get(f.name, f.name)
            if not f.metadata or f.name in skip or (only is not None and f.name not in only) or dest in seen:
                continue
            seen.add(dest)
            opts.append(field_option(f, default=defaults.get(f.name, MISSING), dest=dest))

    def deco(fn: Callable) -> Callable:
        for opt in reversed(opts):
            fn = opt(fn)
        return fn
    return deco


def take(cls: type, kwargs: dict[str, Any], *, rename: dict[str, str] | None = None, **fixed: Any) -> Any:
    """Build ``cls`` from the command's keyword arguments, removing the ones it used."""
    rename = dict(rename or {})
    given = {}
    for f in fields(cls):
        key = rename.get(f.name, f.name)
        if key in kwargs:
            given[f.name] = kwargs.pop(key)
    given.update(fixed)
    return cls(**given)
