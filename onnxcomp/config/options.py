"""How an option is declared once: a dataclass field carrying its help, choices and CLI spelling.

Every config (one frozen dataclass per step, see the sibling modules) declares its fields with
:func:`option`. The command line is generated from those fields (``onnxcomp.cli.options``), the
Python API takes the same names (:func:`build`), and both refuse the same bad values with the same
message, naming the option as the caller spelled it (``--round-to`` on the command line,
``round_to`` in Python: :func:`spell`).
"""
from __future__ import annotations

import contextlib
import contextvars
import enum
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Iterator

from onnxcomp.errors import ConfigError

_CLI: contextvars.ContextVar[bool] = contextvars.ContextVar("onnxcomp_cli_spelling", default=False)


@contextlib.contextmanager
def cli_spelling() -> Iterator[None]:
    """Inside, messages spell options as flags (``--round-to``), as the command line does."""
    token = _CLI.set(True)
    try:
        yield
    finally:
        _CLI.reset(token)


def spell(name: str) -> str:
    """An option's name as the caller wrote it: ``--round-to`` on the command line, ``round_to`` in Python."""
    return "--" + name.replace("_", "-") if _CLI.get() else name


def spell_value(name: str, value: Any) -> str:
    """``--sparsity 1.5`` on the command line, ``sparsity=1.5`` in Python."""
    shown = f"{value:g}" if isinstance(value, float) else value
    if _CLI.get():
        return f"{spell(name)} {shown}"
    return f"{name}={shown}" if isinstance(value, (int, float)) else f"{name}={value!r}"


def option(default: Any, help: str, *, choices: type[enum.Enum] | None = None, metavar: str | None = None,
           aliases: tuple[str, ...] = (), cli: str | None = None, flag: bool = False,
           hidden: bool = False, repeat: bool = False, percent: bool = False) -> Any:
    """A config field declared once: default, help (its first sentence is the CLI help), choices
    (an Enum whose values are the allowed strings), extra CLI spellings (``aliases``, e.g. an old
    name), ``cli`` for a flag spelled differently from the field, ``flag`` for a bool switched on
    by its name alone (else ``--x/--no-x``), ``repeat`` for a tuple option given several times,
    ``hidden`` to keep it off ``--help``, ``percent`` for a fraction also written as ``1%``."""
    meta = {"help": help, "choices": choices, "metavar": metavar, "aliases": tuple(aliases), "cli": cli,
            "flag": flag, "hidden": hidden, "repeat": repeat, "percent": percent}
    if isinstance(default, (list, dict, set)):
        raise TypeError("option defaults must be immutable")
    return field(default=default, metadata=meta)


def values(choices: type[enum.Enum]) -> tuple[str, ...]:
    """The allowed strings of an Enum of choices."""
    return tuple(m.value for m in choices)


def choice(name: str, value: Any, choices: type[enum.Enum]) -> str:
    """``value`` as one of the Enum's strings, or a one-line ConfigError naming the option."""
    if isinstance(value, choices):
        return value.value
    allowed = values(choices)
    if value not in allowed:
        raise ConfigError(f"{spell_value(name, value)} is not one of {', '.join(allowed)}",
                          f"choose one of: {', '.join(allowed)}")
    return value


def fraction(name: str, value: Any, *, low: float = 0.0, high: float = 1.0, inclusive_high: bool = False,
             example: float = 0.5) -> float:
    """A number in [low, high) (or [low, high]); else a one-line ConfigError."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{spell_value(name, value)} is not a number",
                          f"give a fraction, e.g. {spell_value(name, example)}") from None
    ok = low <= v <= high if inclusive_high else low <= v < high
    if not ok:
        bound = f"{low:g}..{high:g}" + ("" if inclusive_high else " (exclusive)")
        raise ConfigError(f"{spell_value(name, value)} is outside {bound}",
                          f"give a fraction, e.g. {spell_value(name, example)}")
    return v


def positive(name: str, value: Any, what: str = "a positive integer", example: int = 8) -> int | None:
    """None, or a whole number >= 1; else a one-line ConfigError."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < 1:
        raise ConfigError(f"{spell_value(name, value)} is not positive",
                          f"give {what}, e.g. {spell_value(name, example)}")
    return int(value)


def non_negative(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < 0:
        raise ConfigError(f"{spell_value(name, value)} is negative or not a whole number", "give 0 or more")
    return int(value)


def patterns(value: Any) -> tuple[str, ...]:
    """Glob patterns as a tuple (a single string is one pattern)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


@dataclass(frozen=True)
class Needs:
    """What a step needs before it may run: real calibration data, and why (for the message)."""

    real_data: str | None = None  # the option (spelled) that needs it, e.g. "--score obs"
    instead: str | None = None  # what runs without data, for the message (e.g. "--activations none ...")

    def check(self, has_real_data: bool, step: str) -> None:
        if self.real_data and not has_real_data:
            raise ConfigError(f"{step}: {self.real_data} needs real calibration data",
                              "pass --data with inputs from your task (e.g. a calib.npz)"
                              + (f", or {self.instead}" if self.instead else ""))


def names(cls: type) -> tuple[str, ...]:
    """The option names (field names) of a config class."""
    return tuple(f.name for f in fields(cls))


def build(cls: type, given: dict[str, Any], *, step: str) -> Any:
    """``cls(**given)``, refusing a name ``cls`` does not declare with a one-line ConfigError."""
    unknown = sorted(set(given) - set(names(cls)))
    if unknown:
        raise ConfigError(f"{step} has no option {', '.join(spell(u) for u in unknown)}",
                          f"its options are: {', '.join(spell(n) for n in names(cls))}")
    return cls(**given)


def defaults(cls: type) -> dict[str, Any]:
    """Field name -> default of a config class."""
    return {f.name: f.default for f in fields(cls) if f.default is not MISSING}


def describe(cls: type) -> list[dict[str, Any]]:
    """Each field with its declaration (for the CLI generator and the docs)."""
    return [{"name": f.name, "type": f.type, "default": f.default, **f.metadata} for f in fields(cls)
            if f.metadata]
