"""The ``onnxcomp`` command group: every command module's command, registered here."""
from __future__ import annotations

import click

from onnxcomp.cli.auto_cmd import auto_cmd
from onnxcomp.cli.bench_cmd import bench_cmd
from onnxcomp.cli.cluster_cmd import cluster_cmd
from onnxcomp.cli.compare_cmd import compare_cmd
from onnxcomp.cli.compress_cmd import compress_cmd
from onnxcomp.cli.depthwise_cmd import depthwise_cmd
from onnxcomp.cli.factorize_cmd import factorize_cmd
from onnxcomp.cli.inspect_cmd import inspect_cmd
from onnxcomp.cli.pack_cmd import pack_cmd, unpack_cmd
from onnxcomp.cli.prune_cmd import prune_channels_cmd, prune_cmd
from onnxcomp.cli.quantize_cmd import quantize_cmd
from onnxcomp.cli.sensitivity_cmd import sensitivity_cmd

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
COMMANDS = (inspect_cmd, prune_cmd, prune_channels_cmd, cluster_cmd, quantize_cmd, compress_cmd, factorize_cmd,
            depthwise_cmd, auto_cmd, sensitivity_cmd, compare_cmd, bench_cmd, pack_cmd, unpack_cmd)


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="onnxcomp")
def cli() -> None:
    """Post-training compression of ONNX models: prune, factorize, cluster, quantize, benchmark.

    \b
    Examples:
      onnxcomp inspect model.onnx
      onnxcomp prune model.onnx --sparsity 0.9 --data calib.npz
      onnxcomp prune model.onnx --structured --ratio 0.3 --data calib.npz
      onnxcomp cluster model.onnx --bits 4 --data calib.npz
      onnxcomp quantize model.onnx --data calib.npz
      onnxcomp bench model.onnx model.channels30.onnx
    """


for _command in COMMANDS:
    _command.context_settings = {**CONTEXT, **(_command.context_settings or {})}
    cli.add_command(_command)
