"""The pass abstraction: plan without mutating, apply once, report everything.

A pass is built from its frozen config (:mod:`onnxcomp.config`). ``plan`` decides what to do to
each weight without touching the model (so ``--dry-run`` and reports are free); ``apply`` edits the
model in place once and returns a :class:`PassResult` with a row per weight, including every
skipped weight and its reason. Passes never read or write files.
"""
from __future__ import annotations

import fnmatch
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import onnx

from onnxcomp.config import Needs
from onnxcomp.graph.weights import Weight


@dataclass
class Context:
    """What a pass may use besides the model it edits: calibration data, the untouched input model
    (the reference of output-matched fitting), the reports of the steps run so far, the encoding
    the runner will store changed weights in, shapes, threads, seed and a progress callback."""

    data: Any = None  # CalibrationData or None
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    threads: int | None = None
    progress: Any = None  # None, or a callable(label, done, total) per layer
    seed: int = 0
    original: onnx.ModelProto | None = None
    history: list["PassResult"] = field(default_factory=list)
    encoding: str = "auto"
    memo: dict | None = None  # measurements a caller lets passes reuse across runs (auto's trials)

    @property
    def has_real_data(self) -> bool:
        return self.data is not None and not getattr(self.data, "random", False)


@dataclass
class Change:
    """One row of a pass report: what happened to one weight (or why it was skipped)."""

    name: str
    op: str
    action: str  # e.g. "pruned", "clustered", "factorized", "skipped"
    params_before: int = 0
    params_after: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    macs_before: int | None = None
    macs_after: int | None = None
    reason: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def skipped(self) -> bool:
        return self.action == "skipped"

    @property
    def shown(self) -> str:
        """The name tables show: the layer's when the weight's own was made up by the exporter
        (``detail["layer"]``, see :mod:`onnxcomp.pipeline.labels`), else the weight's."""
        return self.detail.get("layer", self.name)


@dataclass
class PassResult:
    """What a pass changed: one Change per weight considered, totals, notes."""

    pass_name: str
    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def applied(self) -> list[Change]:
        return [c for c in self.changes if not c.skipped]

    @property
    def skipped(self) -> list[Change]:
        return [c for c in self.changes if c.skipped]

    def total(self, key: str) -> int:
        return sum(getattr(c, key) or 0 for c in self.changes)

    def to_dict(self) -> dict[str, Any]:
        return {"pass": self.pass_name, "settings": self.settings, "notes": self.notes,
                "totals": {k: self.total(k) for k in ("params_before", "params_after",
                                                      "bytes_before", "bytes_after")},
                "changes": [asdict(c) for c in self.changes]}


def skip(weight: Weight, reason: str) -> Change:
    """A 'skipped' row for a weight, with its reason."""
    return Change(name=weight.name, op=weight.op_type, action="skipped", params_before=weight.size,
                  params_after=weight.size, bytes_before=weight.nbytes, bytes_after=weight.nbytes,
                  reason=reason)


def matches(weight: Weight, include: tuple[str, ...], exclude: tuple[str, ...]) -> str | None:
    """Why --include/--exclude rule this weight out, or None if it is selected.

    Patterns are shell globs matched against the weight name and its consumer node names.
    """
    names = [weight.name, *weight.consumers]
    if include and not any(fnmatch.fnmatchcase(n, p) for n in names for p in include):
        return "not matched by --include"
    hit = next((p for p in exclude for n in names if fnmatch.fnmatchcase(n, p)), None)
    return f"matched --exclude {hit}" if hit else None


class Pass(ABC):
    """Base class of every compression pass."""

    name: ClassVar[str] = "pass"
    # only changes weights' values (never their consumers): it also takes the weights that
    # If/Loop/Scan bodies read (see onnxcomp.graph.nested), without statistics for them
    nested_weights: ClassVar[bool] = False

    def __init__(self, config: Any) -> None:
        self.config = config

    @property
    def needs(self) -> Needs:
        """What the pass needs before it runs (declared by its config)."""
        return getattr(self.config, "needs", Needs())

    @abstractmethod
    def plan(self, model: onnx.ModelProto, ctx: Context) -> Any:
        """Decide what to do; must not modify ``model``."""

    @abstractmethod
    def apply(self, model: onnx.ModelProto, plan: Any, ctx: Context) -> PassResult:
        """Carry out ``plan`` on ``model`` in place and report."""

    def run(self, model: onnx.ModelProto, ctx: Context) -> PassResult:
        return self.apply(model, self.plan(model, ctx), ctx)
