"""Human-readable tables and number formatting shared by every command."""
from __future__ import annotations

import json
import math
from typing import Any, Iterable, Sequence

import numpy as np


def fmt_count(n: float | int | None, unit: str = "") -> str:
    """1234567 -> '1.23 M' (None -> 'unknown')."""
    if n is None:
        return "unknown"
    n = float(n)
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}{unit}"
    return f"{n:.0f} {unit}".rstrip()


def fmt_bytes(n: int | None) -> str:
    """Bytes in binary-free SI units: 1_968_757 -> '1.97 MB'."""
    return "unknown" if n is None else fmt_count(n, "B") if n >= 1000 else f"{n} B"


def fmt_pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f} %"


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.3f}x"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> str:
    """A plain-text table; ``align`` holds one 'l' or 'r' per column (default: first left)."""
    rows = [["" if c is None else str(c) for c in row] for row in rows]
    align = align or ("l" + "r" * (len(headers) - 1))
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w)
                         for c, w, a in zip(cells, widths, align)).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out.extend(line(r) for r in rows)
    return "\n".join(out)


def _default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return None if not np.isfinite(o) else float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if hasattr(o, "__fspath__"):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _clean(o: Any) -> Any:
    """NaN/inf are not JSON: map them to None."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def to_json(obj: Any) -> str:
    """Serialise a report (dataclass with ``to_dict``, dict, numpy scalars) as strict JSON."""
    if hasattr(obj, "to_dict"):
        obj = obj.to_dict()
    return json.dumps(_clean(json.loads(json.dumps(obj, default=_default))), indent=2,
                      allow_nan=False)
