"""``onnxcomp pack`` / ``onnxcomp unpack``: the entropy-coded .onnxc archive for shipping models."""
from __future__ import annotations

import click

from onnxcomp.cli.common import emit, json_option
from onnxcomp.cli.options import config_options
from onnxcomp.config import Output
from onnxcomp.report.tables import fmt_bytes, fmt_ratio, table

force_option = config_options(Output, only=("force",))


def render_pack(report) -> str:
    """Per-stream table: raw size, order-0 entropy bound, coded size; then the totals."""
    rows = [[s.kind, fmt_bytes(s.raw_bytes), "-" if s.entropy_bytes is None else fmt_bytes(int(s.entropy_bytes)),
             fmt_bytes(s.coded_bytes)] for s in report.streams]
    return "\n".join([table(["stream", "raw", "entropy bound", "coded (lzma)"], rows, "lrrr"),
                      f"wrote {report.path}",
                      f"size: {fmt_bytes(report.original_bytes)} -> {fmt_bytes(report.archive_bytes)} "
                      f"({fmt_ratio(report.ratio)} of the input); unpack restores it byte for byte"])


@click.command("pack")
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Archive path (default: <stem>.onnxc beside the input).")
@force_option
@json_option
def pack_cmd(model: str, output: str | None, force: bool, as_json: bool) -> None:
    """Pack an ONNX file into an entropy-coded .onnxc archive (weights split into streams).

    The archive has a versioned header and the sha256 of the original; `onnxcomp unpack`
    restores the exact bytes. Prints each stream's order-0 entropy bound beside its coded size.

    Example: onnxcomp pack model.cluster4.onnx
    """
    from onnxcomp.api import pack

    emit(pack(model, output, force=force), as_json, render_pack)


@click.command("unpack")
@click.argument("archive", type=click.Path(dir_okay=True))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="ONNX path (default: <stem>.unpack.onnx beside the archive).")
@force_option
@json_option
def unpack_cmd(archive: str, output: str | None, force: bool, as_json: bool) -> None:
    """Restore the byte-identical ONNX file from an .onnxc archive (checksum verified).

    Example: onnxcomp unpack model.cluster4.onnxc -o model.onnx
    """
    from onnxcomp.api import unpack

    path = unpack(archive, output, force=force)
    emit({"archive": archive, "output": str(path), "bytes": path.stat().st_size}, as_json,
         lambda r: f"wrote {r['output']} ({fmt_bytes(r['bytes'])}, sha256 verified)")
