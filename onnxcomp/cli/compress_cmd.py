"""``onnxcomp compress``: the Deep Compression pipeline (prune -> cluster -> encode -> pack)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from onnxcomp.cli.common import Writing, model_argument, writing_options
from onnxcomp.cli.options import config_options, take
from onnxcomp.config import ClusterConfig, CorrectionConfig, EncodeConfig, PruneConfig
from onnxcomp.report.tables import fmt_bytes, fmt_ratio, table


def _quality(fid: Any) -> str:
    if fid is None:
        return "-"
    if fid.accuracy is not None:
        return f"acc {100 * fid.accuracy['candidate']:.2f} %"
    metric, value = fid.headline
    label = {"top1_agreement": "top-1 agr", "cosine": "cosine"}.get(metric, metric)
    return "-" if value is None else f"{label} {100 * value:.2f} %" if metric == "top1_agreement" \
        else f"{label} {value:.5f}"


def render_stages(pipe: Any) -> str:
    """The paper's table: bytes after each stage, ratio to the original, fidelity on the data."""
    rows = [[s.name, fmt_bytes(s.bytes), fmt_ratio(s.ratio), f"{1 / s.ratio:.1f}x" if s.ratio else "-",
             _quality(s.fidelity), s.note] for s in pipe.stages]
    first = next((s.fidelity for s in pipe.stages if s.fidelity is not None), None)
    lines = [table(["stage", "bytes", "ratio", "smaller", "fidelity", "stored as"], rows, "lrrrll")]
    if first is not None:
        lines.append(f"data: {first.data}")
    skipped = [c for c in pipe.result_of("cluster").skipped]
    if skipped:
        lines.append(f"not clustered: {len(skipped)} weight(s) ({', '.join(sorted({c.reason.split(' (')[0] for c in skipped}))})")
    lines += [f"note: {n}" for r in pipe.results for n in r.notes]
    return "\n".join(lines)


@click.command("compress")
@model_argument
@config_options(PruneConfig, only=("sparsity", "allocation"), defaults={"sparsity": 0.9})
@config_options(ClusterConfig, only=("bits", "granularity", "allocation"), defaults={"bits": 4},
                rename={"allocation": "bit_allocation"})
@config_options(CorrectionConfig, EncodeConfig)
@click.option("--recipe", "recipe_path", type=click.Path(dir_okay=False), default=None,
              help="Replay a recipe (YAML, e.g. written by onnxcomp auto) instead of --sparsity/--bits.")
@click.option("--pack", "pack", is_flag=True, help="Also write OUT.onnxc, the entropy-coded archive (stage 3).")
@writing_options
def compress_cmd(model: str, recipe_path: str | None, pack: bool, as_json: bool, **kw: Any) -> None:
    """Prune, cluster and encode (Deep Compression without retraining); print the stage table.

    Bytes after each stage, the ratio to the original and the fidelity on the data (random data
    when --data is not given: no quality guarantee). With --pack the .onnxc archive is written too.

    Example: onnxcomp compress model.onnx --sparsity 0.9 --bits 4 --data calib.npz --pack
    """
    from onnxcomp import api

    if recipe_path is not None:
        return _replay(model, recipe_path, kw, pack=pack, as_json=as_json)
    prune = PruneConfig(sparsity=kw.pop("sparsity"), allocation=kw.pop("allocation"))  # fail fast
    cluster = take(ClusterConfig, kw, rename={"allocation": "bit_allocation"})
    corr = take(CorrectionConfig, kw)
    enc = take(EncodeConfig, kw)
    w = Writing(model, kw, "compress", as_json)
    pipe = api.compress(w.original, prune.sparsity, cluster.bits, data=w.data, granularity=cluster.granularity,
                        allocation=prune.allocation, bit_allocation=cluster.allocation,
                        correction=corr.correction, threads=w.threads, progress=w.progress,
                        measure=w.unmeasured is None, encoding=enc.encoding)
    written = w.write(pipe, "compress")
    report, human = pipe.to_dict(), render_stages(pipe)
    if pack:
        report, human = _with_archive(w, written, pipe)
    w.finish(pipe, human, report, written=written)


def _pack(w: Writing, written: Any) -> Any:
    """Pack the file just written into OUT.onnxc (unpack restores it byte for byte)."""
    from onnxcomp import api
    from onnxcomp.encode.packfile import SUFFIX

    return api.pack(written.path, Path(written.path).with_suffix(SUFFIX), force=w.out.force)


def _with_archive(w: Writing, written: Any, pipe: Any) -> tuple[dict, str]:
    """The stage table with the archive as its last row."""
    from onnxcomp.pipeline.run import Stage

    archive = _pack(w, written)
    base = pipe.stages[0].bytes
    pipe.stages.append(Stage("packed (lzma)", archive.archive_bytes, archive.archive_bytes / base,
                             pipe.stages[-1].fidelity, "lossless: same fidelity as clustered"))
    report = pipe.to_dict()
    report["archive"] = archive.to_dict()
    report["stages"][-1]["path"] = archive.path
    return report, render_stages(pipe) + f"\nwrote {report['archive']['output']}"


def _replay(model: str, recipe_path: str, kw: dict, *, pack: bool, as_json: bool) -> None:
    """compress --recipe: run a recipe's steps, write (verified), optionally pack."""
    from onnxcomp import api
    from onnxcomp.pipeline import recipe as recipes

    rec = recipes.load(recipe_path)  # a bad recipe fails before any work
    for n in ("sparsity", "allocation", "bits", "granularity", "bit_allocation", "correction", "encoding"):
        kw.pop(n, None)
    w = Writing(model, kw, "compress", as_json)
    result = api.replay(w.original, rec, data=w.data, threads=w.threads, progress=w.progress)
    written = w.write(result, "compress")
    report: dict[str, Any] = {"recipe": rec}
    lines = [f"recipe {recipe_path}: " + " -> ".join(next(iter(s)) for s in rec["steps"])]
    if pack:
        archive = _pack(w, written)
        report["archive"] = archive.to_dict()
        lines.append(f"wrote {report['archive']['output']} ({archive.archive_bytes} bytes)")
    w.finish(result, "\n".join(lines), report, written=written)
