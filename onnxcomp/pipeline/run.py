"""The one runner: every writing command, recipe and ``auto`` trial goes through :func:`run`.

It checks what every step needs before the first one runs, applies the steps' passes in order
to a copy of the model (the input is never touched), inserts the per-channel output correction
after the steps that change weight values, stores every changed weight in its smallest
encoding, and returns one :class:`Result`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Sequence

import onnx

from onnxcomp import io
from onnxcomp.config import ClusterConfig, CorrectionConfig, EncodeConfig, FoldConfig, PruneConfig
from onnxcomp.encode import EncodeChoice, encode_weights
from onnxcomp.encode.budget import LOAD_TARGET
from onnxcomp.encode.select import LOAD_MEMORY_REASON
from onnxcomp.errors import ConfigError
from onnxcomp.io.model import Model, ModelLike, as_model
from onnxcomp.passes import make_pass
from onnxcomp.passes.base import Context, Pass, PassResult
from onnxcomp.passes.correction import CorrectionPass
from onnxcomp.pipeline.labels import label_layers

if TYPE_CHECKING:
    from onnxcomp.measure.loadpeak import Loads

CORRECTED = (PruneConfig, ClusterConfig)  # steps whose changed weights get the per-channel correction
SIZE_STEPS = (PruneConfig, ClusterConfig)  # steps that only shrink the file: never a larger output
# free memory, in fp32 weight bytes, to load the input beside the passes (a convnet's load peaks
# near 3x its weight bytes; the passes hold a few copies of their own)
BACKGROUND_LOAD_ROOM = 12


@dataclass
class Stage:
    """Bytes and fidelity of the model after one step (the Deep Compression table)."""

    name: str
    bytes: int
    ratio: float
    fidelity: Any = None  # FidelityReport (None for the original)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.name, "bytes": self.bytes, "ratio": self.ratio, "note": self.note,
                "fidelity": self.fidelity.to_dict() if self.fidelity is not None else None}


@dataclass
class Result:
    """A compressed model (not yet written): one PassResult per pass run (corrections included),
    the encoding chosen per changed weight and, when measured, the size/fidelity after each step."""

    model: Model
    results: list[PassResult] = field(default_factory=list)
    encodings: list[EncodeChoice] = field(default_factory=list)
    stages: list[Stage] = field(default_factory=list)
    archive: bytes | None = None

    @property
    def proto(self) -> onnx.ModelProto:
        return self.model.proto

    @property
    def result(self) -> PassResult:
        """The report of the first step (the command's own pass)."""
        return self.results[0]

    def result_of(self, name: str) -> PassResult | None:
        """The first report of the pass called ``name`` (e.g. "correction"), if it ran."""
        return next((r for r in self.results if r.pass_name == name), None)

    def to_dict(self) -> dict[str, Any]:
        out = {"passes": [r.to_dict() for r in self.results], "encodings": [e.to_dict() for e in self.encodings]}
        if self.stages:
            out["stages"] = [s.to_dict() for s in self.stages]
        return out


def as_data(data: Any, model: Model, input_shapes: dict | None = None) -> Any:
    """None stays None (data-free); anything else becomes validated CalibrationData."""
    from onnxcomp.data.calibration import CalibrationData, load_data

    if data is None or isinstance(data, CalibrationData):
        return data
    return load_data(data, model.proto, input_shapes=input_shapes)


def plan_passes(steps: Sequence[Any], correction: CorrectionConfig | None,
                final_correction: CorrectionConfig | None = None) -> list[tuple[int, Pass]]:
    """(index of the user step, pass) for every pass to run: each step's pass, the correction after
    the steps that change weight values, and a final correction over every changed weight."""
    out = []
    for i, cfg in enumerate(steps):
        out.append((i, make_pass(cfg)))
        if hasattr(out[-1][1], "correction"):  # a step that corrects its own layers as it goes (quantize)
            out[-1][1].correction = correction.correction if correction is not None else "none"
        if correction is not None and isinstance(cfg, CORRECTED):
            out.append((i, CorrectionPass(correction)))
        if getattr(cfg, "fold", False):  # a speed rewrite ends with the lossless fold
            out.append((i, make_pass(FoldConfig())))
    if final_correction is not None:
        out.append((len(steps) - 1, CorrectionPass(final_correction, scope="all")))
    return out


def check_needs(passes: Sequence[tuple[int, Pass]], ctx: Context) -> None:
    """Refuse, before any work, a step that needs real calibration data when there is none."""
    for _, p in passes:
        p.needs.check(ctx.has_real_data, p.name)


def run(model: ModelLike, steps: Sequence[Any], *, data: Any = None,
        correction: CorrectionConfig | str | None = "auto", encoding: EncodeConfig | str = "auto",
        final_correction: CorrectionConfig | None = None, input_shapes: dict | None = None,
        threads: int | None = None, seed: int = 0, progress: Any = None,
        after_step: Callable[[int, Model, Context], None] | None = None, memo: dict | None = None) -> Result:
    """Apply ``steps`` (step configs, in order) to a copy of ``model``, correct, encode; one Result.

    ``correction`` refits the output channels of the weights each prune/cluster step changed
    (auto = affine with real data, none without; clustered weights keep their codebooks);
    ``final_correction`` refits every weight that differs from the input at the end (recipes).
    ``encoding`` stores the changed weights ("dense" keeps them as float tensors).
    ``after_step(i, model, ctx)`` is called after step ``i`` (and its correction). ``memo``: a dict
    kept across calls in which passes keep measurements that depend only on the model and data
    (auto's trials at several budgets measure each layer's sensitivity once).

    A model loaded lazily is copied without its big tensors: passes read each weight from disk
    when they need it, and above 2 GB weights no pass changed stay references to the input's data.
    """
    original = as_model(model)
    if isinstance(correction, str):
        correction = CorrectionConfig(correction)
    enc = encoding if isinstance(encoding, EncodeConfig) else EncodeConfig(encoding)
    if not steps:
        raise ConfigError("no compression step was given", "give at least one step")
    data = as_data(data, original, input_shapes)
    passes = plan_passes(steps, correction, final_correction)
    ctx = Context(data=data, input_shapes=dict(input_shapes or {}), threads=threads, progress=progress,
                  seed=seed, original=original.proto, encoding=enc.encoding, memo=memo)
    check_needs(passes, ctx)
    loads = _input_loads(original, enc.encoding, steps) if memo is None else None
    try:
        return _run(original, passes, steps, ctx, enc, loads, after_step)
    finally:
        if loads is not None:
            loads.close()


def _input_loads(original: Model, encoding: str, steps: Sequence[Any]) -> Loads | None:
    """A load of the input file, measured in the background while the passes run, when the
    default encoding may set its load budget against them (pruned or clustered weights of more
    than its floor of bytes); else None (also in ``auto``'s trials, which measure when they need)."""
    from onnxcomp.encode.budget import LOAD_FLOOR, fp32_weight_bytes
    from onnxcomp.errors import OnnxCompError

    weights = fp32_weight_bytes(original.proto)
    if encoding != "auto" or original.path is None or not any(isinstance(c, SIZE_STEPS) for c in steps) \
            or weights <= LOAD_FLOOR or io.available_memory() < BACKGROUND_LOAD_ROOM * weights:
        return None  # (short of memory: measured after the passes, when they have freed theirs)
    from onnxcomp.measure.loadpeak import Loads

    try:
        return Loads([original.path], like=original.proto)
    except (OnnxCompError, OSError):
        return None


def _run(original: Model, passes: list, steps: Sequence[Any], ctx: Context, enc: EncodeConfig, loads: Loads | None,
         after_step: Callable | None) -> Result:
    work = original.copy()
    work.path = None
    from onnxcomp.graph.layout import adapt_for, strip

    layout = getattr(ctx.data, "layout", None)  # inputs with samples off axis 0: passes run samples-first
    adapt_for(work.proto, ctx.data, inplace=True)
    ctx.original = adapt_for(ctx.original, ctx.data)
    if ctx.has_real_data and ctx.memo is None:  # auto (a memo) checks once before its trials
        from onnxcomp.measure.capture import check_runs

        check_runs(ctx.original, ctx.data, threads=ctx.threads)
    from onnxcomp.graph.normalize import einsum_matmuls, fold_weight_transposes, unfuse, unfused_copy
    from onnxcomp.graph.weights import find_weights, weight_slots
    from onnxcomp.measure.inspect import subgraph_notes

    from onnxcomp.graph import tail

    cut = tail.split(work.proto)  # outputs sized by the data (after an NMS): the passes see the head
    ctx.original = tail.head(ctx.original) if cut is not None else ctx.original
    unfused = unfuse(work.proto)  # onnxruntime's FusedConv/FusedGemm: the Conv/Gemm and activation they fuse
    if unfused:
        ctx.original = unfused_copy(ctx.original)  # the same names: the walks pair their tensors
    fold_weight_transposes(work.proto, weight_slots)  # a weight read through a Transpose: stored transposed
    einsum_matmuls(work.proto)  # an Einsum that is a MatMul by a matrix: that MatMul
    nested = any(p.nested_weights for _, p in passes)
    if nested:  # the weights If/Loop/Scan bodies store move to the main graph (same meaning)
        from onnxcomp.graph.nested import hoist

        hoist(work.proto, weight_slots)
    found = find_weights(work.proto, nested=nested)
    left_alone = subgraph_notes(found, "values" if nested else "run")
    taken = {}
    if nested and ctx.has_real_data:  # an If taking one branch on every sample: its layers get statistics
        from onnxcomp.graph.constants import FLOAT_TYPES
        from onnxcomp.graph.taken import inline, restore
        from onnxcomp.measure.branches import taken_branches

        taken = taken_branches(work.proto, ctx.data, ctx.threads)
        frozen = frozenset(t.name for t in work.proto.graph.initializer if t.data_type in FLOAT_TYPES) - \
            {w.name for w in found}  # what no pass takes stays so
    for k, (i, p) in enumerate(passes):
        stash = inline(work.proto, taken, frozen) if taken and p.nested_weights else []
        try:
            report = p.run(work.proto, ctx)
        finally:
            if stash:
                restore(work.proto, stash)
        if stash:
            report.notes.append(f"{len(stash)} If node(s) take one branch on every calibration sample: that "
                                "branch's layers are fitted on the data like the main graph's")
        if report.changes or report.notes or not getattr(p, "idle_unreported", False):
            ctx.history.append(report)  # (a fold that found nothing leaves no report)
        io.release()  # what the pass freed (its threads' heaps too) before the next holds more
        if after_step is not None and (k + 1 == len(passes) or passes[k + 1][0] != i):
            after_step(i, work, ctx)
    if layout:  # (only what this run adapted: auto's trials get models adapted by the search)
        strip(work.proto)
    results = ctx.history
    results[0].notes += left_alone + ([tail.note(cut)] if cut is not None else []) + \
        ([f"{unfused} onnxruntime fused op(s) (FusedConv/FusedGemm) written as the standard ops they fuse, "
          "so their weights are compressed (onnxruntime fuses them again at load)"] if unfused else [])
    if cut is not None:
        tail.attach(work.proto, cut)
    touched = {c.name for r in results for c in r.applied}
    from onnxcomp.graph.edit import flush_subnormals

    stored = {t.name for t in original.proto.graph.initializer} | {n.output[0] for n in original.proto.graph.node
                                                                     if n.op_type == "Constant"}
    flushed = flush_subnormals(work.proto, stored - touched)
    if flushed:
        results[0].notes.append(f"{flushed} subnormal weight value(s) set to 0 (x86 CPUs run them ~100x slower)")
    quantized = any(r.pass_name == "quantize" for r in results)
    if quantized:  # integer weights: tables of their own values (a clustered weight's few int8 codes)
        from onnxcomp.encode.select import INTEGER_KINDS

        encodings = encode_weights(work.proto, encoding=enc.encoding, kinds_for=INTEGER_KINDS,
                                   reference=original.proto)
    else:
        encodings = encode_weights(work.proto, names=touched, encoding=enc.encoding,
                                   reference=original.proto, reference_loads=loads) if touched else []
    dense = [e for e in encodings if e.reason and e.reason.startswith(LOAD_MEMORY_REASON)]
    if dense:
        results[0].notes.append(
            f"{len(dense)} weight(s) ({sum(e.dense_bytes for e in dense) / 1e6:.1f} MB) stored dense: decoding them "
            f"too would take onnxruntime past {LOAD_TARGET:g}x the memory it needs to load the input model; "
            "--encoding smallest stores every weight smaller, `onnxcomp pack` makes the smallest download")
    if touched:
        # the rewritten weights' old and intermediate bytes stay in the proto's arena until it is
        # freed: keep a copy of the live bytes only (lazy tensors read in when below 2 GB)
        work.proto = io.compact(work.proto)
        io.release()  # the old arena's pages, freed but still resident
    if touched and enc.encoding != "dense" and all(isinstance(c, SIZE_STEPS) for c in steps) and \
            io.model_bytes(work.proto) > io.model_bytes(original.proto):
        work, encodings = _keep_input(original, results, io.model_bytes(work.proto))
    label_layers(results, found)  # the layer behind a weight the exporter named onnx::MatMul_314
    sizes = {e.name: e.bytes for e in encodings}
    for r in results:
        if r.pass_name == "correction":
            continue
        for c in r.applied:
            if c.name in sizes:
                c.bytes_after = sizes[c.name]
    return Result(work, results, encodings)


def _keep_input(original: Model, results: list[PassResult], grown: int) -> tuple[Model, list]:
    """The input itself, unchanged, for steps that only shrink the file (pruning, clustering) when
    their result would be larger than the input (weights too small for any encoding to pay for
    its tables, a correction's new biases): every change becomes a skip that says so."""
    before = io.model_bytes(original.proto)
    why = "kept as it was: the compressed model would be larger than the input"
    for r in results:
        r.changes = [c if c.skipped else replace(c, action="skipped", reason=why, params_after=c.params_before,
                                                 bytes_after=c.bytes_before) for c in r.changes]
    results[0].notes.append(f"the input is written unchanged: compressed it would take {grown} B, more than "
                            f"its {before} B (weights too small for an encoding to pay for its tables)")
    work = original.copy()
    work.path = None
    return work, []


def step_name(cfg: Any) -> str:
    """The recipe name of a step config (prune, structured, factorize, depthwise, cluster, int8, quantize)."""
    from onnxcomp.config import STEPS

    return next(name for name, cls in STEPS.items() if isinstance(cfg, cls))

