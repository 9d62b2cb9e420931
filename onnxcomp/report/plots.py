"""PNG plots for ``bench --plot`` and ``compare --plot`` (matplotlib, imported lazily, Agg backend)."""
from __future__ import annotations

import math
import os
from typing import Any, Sequence

from onnxcomp.errors import ConfigError


def require_matplotlib() -> Any:
    """matplotlib.pyplot on the Agg backend, or a one-line ConfigError naming the extra."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--plot needs matplotlib", "pip install onnxcomp[plot]") from None
    return plt


def _save(fig: Any, path: str | os.PathLike) -> None:
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise ConfigError(f"cannot write plot {path}: {exc.strerror or exc}", "check the folder") from None
    finally:
        require_matplotlib().close(fig)


def plot_latency(names: Sequence[str], times_ms: Sequence[Sequence[float]], path: str | os.PathLike,
                 title: str = "latency per run") -> None:
    """Box plot of the latency distribution of each model."""
    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(names) + 2), 4.5))
    ax.boxplot([list(t) for t in times_ms], showfliers=True)
    ax.set_xticks(range(1, len(names) + 1))
    ax.set_xticklabels([os.path.basename(n) for n in names], rotation=15, ha="right", fontsize=8)
    ax.set_ylabel("latency (ms)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def plot_per_layer(report: Any, path: str | os.PathLike) -> None:
    """SQNR (dB) of every compared tensor in graph order, the first degraded one marked."""
    plt = require_matplotlib()
    rows = report.per_layer or []
    finite = [r["sqnr_db"] for r in rows if math.isfinite(r["sqnr_db"])]
    cap = (max(finite) if finite else 100.0) + 10
    ys = [r["sqnr_db"] if math.isfinite(r["sqnr_db"]) else cap for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.12 * len(rows) + 4), 4.5))
    ax.plot(range(len(ys)), ys, marker=".", lw=1)
    first = report.first_degraded
    if first is not None:
        i = next(k for k, r in enumerate(rows) if r["tensor"] == first)
        ax.axvline(i, color="tab:red", ls="--", lw=1, label=f"first degraded: {first}")
        ax.legend(loc="lower left", fontsize=8)
    if len(rows) <= 40:
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([r["tensor"] for r in rows], rotation=60, ha="right", fontsize=7)
    else:
        ax.set_xlabel("tensor (graph order)")
    ax.set_ylabel(f"SQNR (dB; identical tensors drawn at {cap:.0f})")
    ax.set_title(f"per-layer fidelity: {os.path.basename(report.candidate)} vs {os.path.basename(report.original)}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
