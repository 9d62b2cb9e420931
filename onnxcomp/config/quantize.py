"""Quantization that stays compressed while the model runs (:class:`QuantizeConfig`): onnxruntime's
low-bit kernels (MatMulNBits, GatherBlockQuantized) and QDQ int8, with onnxcomp's calibration."""
from __future__ import annotations

import enum
from dataclasses import dataclass

from onnxcomp.config.options import Needs, choice, fraction, option, spell, spell_value
from onnxcomp.config.prune import SizedSelection


class WeightBits(enum.Enum):
    INT8 = "int8"
    INT4 = "int4"
    INT2 = "int2"


class ActivationBits(enum.Enum):
    INT8 = "int8"
    NONE = "none"


class BlockSize(enum.Enum):
    B16 = "16"
    B32 = "32"
    B64 = "64"
    B128 = "128"


class Residual(enum.Enum):
    FLOAT = "float"
    INT8 = "int8"


@dataclass(frozen=True)
class QuantizeConfig(SizedSelection):
    """Weights (and activations) in onnxruntime's own integer kernels, calibrated on real data.

    MatMul/Gemm with a constant weight at ``weights`` int4/int2 (or int8 without quantized
    activations) become ``com.microsoft.MatMulNBits`` (block-wise along K, ``block`` values per
    scale), the integers chosen by GPTQ against the original outputs; with ``activations`` int8
    every Conv (and MatMul/Gemm at int8) becomes QDQ int8 (per-channel weights, activation ranges
    calibrated on the data), and the elementwise ops between them run in int8 too. Gather
    embeddings become ``GatherBlockQuantized``; with ``store_int8`` the weights no integer kernel
    reads are stored as int8 and dequantized at each run. A layer whose measured error is above
    ``max_layer_error`` stays float.
    """

    min_params: int = option(0, "Skip tensors with fewer parameters (a float layer between integer ones "
                                "costs two conversions).")
    weights: str = option("int8", "Weight integers: int8 (QDQ for convs, and for MatMul/Gemm with "
                                  "--activations int8), int4 or int2 (MatMul/Gemm as MatMulNBits; convs stay "
                                  "int8 QDQ with --activations int8).", choices=WeightBits)
    activations: str = option("int8", "int8: QDQ int8 activations (convs and int8 MatMul/Gemm run integer "
                                      "kernels; MatMulNBits may quantize its input); none: weight-only.",
                              choices=ActivationBits)
    block: str = option("128", "Values per scale along K for MatMulNBits and GatherBlockQuantized (measured on "
                               "vit_digits at 4 bits: 128 ran 1.2x faster and took 0.8x the memory of 32, for "
                               "an output error 5.7e-5 instead of 3.7e-5).",
                        choices=BlockSize)
    gptq: bool | None = option(None, "Choose the integers with GPTQ error feedback against the original outputs "
                                     "(default: on with real --data; else round to nearest on the "
                                     "best-clipped grid).")
    embeddings: bool = option(True, "Also quantize Gather embedding tables (GatherBlockQuantized).")
    store_int8: bool = option(False, "Also store the weights no integer kernel reads (LSTM/GRU/RNN, Einsum, batched "
                                     "MatMul, ConvTranspose, isolated layers) as int8 + DequantizeLinear: a quarter "
                                     "of their bytes, dequantized at each run (measured on lstm_digits: 0.27x the "
                                     "file instead of 0.99x, 1.16x the latency).")
    residual: str = option("int8", "Residual Adds: int8 runs them as QLinearAdd; float keeps the residual "
                                   "stream in float (each branch quantized once, no requantization along the "
                                   "stream; slower: measured equal on effnet_lite0, 1.4x slower on "
                                   "resnet_digits).", choices=Residual)
    max_layer_error: float = option(0.05, "A layer whose quantized output error (relative mean square on "
                                          "--data) is above this stays float.", metavar="E")

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "weights", choice("weights", self.weights, WeightBits))
        object.__setattr__(self, "activations", choice("activations", self.activations, ActivationBits))
        object.__setattr__(self, "block", choice("block", str(self.block), BlockSize))
        object.__setattr__(self, "residual", choice("residual", self.residual, Residual))
        object.__setattr__(self, "max_layer_error", fraction("max_layer_error", self.max_layer_error,
                                                             low=0.0, high=1.0, inclusive_high=True,
                                                             example=0.05))

    @property
    def bits(self) -> int:
        return int(self.weights[3:])

    @property
    def block_size(self) -> int:
        return int(self.block)

    @property
    def nbits(self) -> bool:
        """Whether MatMul/Gemm weights go to MatMulNBits (else QDQ int8 with the convs)."""
        return self.bits < 8 or self.activations == "none"

    @property
    def needs(self) -> Needs:
        if self.activations == "int8":
            return Needs(spell_value("activations", "int8"), instead=f"{spell_value('activations', 'none')} to "
                         "quantize weights only without data (MatMul/Gemm as MatMulNBits; convs stay float)")
        if self.gptq:
            return Needs(spell("gptq"))
        return Needs()

    def tag(self) -> str:
        return f"w{self.bits}" + ("a8" if self.activations == "int8" else "")


@dataclass(frozen=True)
class Int8Config(QuantizeConfig):
    """The ``int8`` recipe step (``auto --int8``): the quantize step at its defaults, QDQ int8
    weights and activations with onnxcomp's calibration."""
