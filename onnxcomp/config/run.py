"""Options every calibrated or writing command shares: the per-channel correction, how changed
weights are stored, the calibration data, onnxruntime threads, quality gates and the output."""
from __future__ import annotations

import enum
from dataclasses import dataclass

from onnxcomp.config.options import Needs, choice, option, positive, spell_value
from onnxcomp.errors import ConfigError


class Correction(enum.Enum):
    AUTO = "auto"
    AFFINE = "affine"
    BIAS = "bias"
    NONE = "none"


@dataclass(frozen=True)
class CorrectionConfig:
    """The per-channel output correction after a step that changed weight values.

    Each changed layer's output channels are refitted on the calibration data to the original
    model's outputs (scale folded into the weights, shift into the bias): affine, bias (shift only)
    or none; auto = affine with real data, none without.
    """

    correction: str = option("auto", "Refit each changed layer's output channels (scale and bias) on --data, "
                                     "layer by layer; auto = affine with real data, none without.",
                             choices=Correction)

    def __post_init__(self) -> None:
        object.__setattr__(self, "correction", choice("correction", self.correction, Correction))

    def mode(self, has_real_data: bool) -> str:
        """affine, bias or none, with ``auto`` resolved."""
        if self.correction == "auto":
            return "affine" if has_real_data else "none"
        return self.correction

    @property
    def needs(self) -> Needs:
        if self.correction in ("affine", "bias"):
            return Needs(spell_value("correction", self.correction))
        return Needs()


ENCODING_FAMILIES = ("auto", "smallest", "dense", "sparse", "codebook", "combined", "fixed")
ENCODING_KINDS = ("zeros", "gaps", "bitmask", "codebook8", "codebook4", "codebook_uint4", "codebook_packed",
                  "codebook_vlc", "sparse_codebook4", "sparse_codebook8", "sparse_codebook_vlc")


@dataclass(frozen=True)
class EncodeConfig:
    """How the weights a step changed are stored (every encoding is decoded bit-exactly at load)."""

    encoding: str = option("auto", "Storage: auto (the smallest per tensor among the encodings onnxruntime "
                                   "decodes at load cheaply, as far as the model then loads within 2x the "
                                   "memory it needs dense: measured), smallest (every encoding: smaller "
                                   "files, up to ~16x the memory while loading), fixed, dense, sparse, "
                                   "codebook, combined, or one kind.",
                           metavar="KIND")

    def __post_init__(self) -> None:
        if self.encoding not in ENCODING_FAMILIES + ENCODING_KINDS:
            raise ConfigError(f"{spell_value('encoding', self.encoding)} is unknown",
                              f"choose one of: {', '.join(ENCODING_FAMILIES + ENCODING_KINDS)}")


@dataclass(frozen=True)
class DataConfig:
    """Calibration / evaluation data (see ``onnxcomp.data``)."""

    data: str | None = option(None, "Calibration/evaluation data: .npz (one array per input name, samples on "
                                    "axis 0, optional 'labels'), .npy, a folder of .npy files or of images. "
                                    "Without it, commands that need real data refuse to run; the others use "
                                    "random data (no quality guarantee).", metavar="PATH")
    labels: str | None = option(None, "Task labels (.npy, one class index per sample) to report accuracy; "
                                      "default: the 'labels' array of the --data .npz, if any.", metavar="PATH")
    samples: int | None = option(None, "Use at most N samples of --data (default: all; random data: "
                                       "--batch-size samples).",
                                 metavar="N", aliases=("--num-samples", "--calib-samples"))
    batch_size: int = option(16, "Samples per onnxruntime run.", aliases=("--batch",))
    preprocess: str | None = option(None, "Image folders only, e.g. 'resize=256,crop=224,scale=1/255,mean=0.485/"
                                          "0.456/0.406,std=0.229/0.224/0.225,channels=RGB,layout=NCHW'.",
                                    metavar="SPEC")
    input_shape: tuple[str, ...] = option((), "Static shape for an input with dynamic dims, e.g. "
                                              "input=1x3x224x224 (repeatable; several inputs in one: "
                                              "ids=1x128,mask=1x128).", metavar="NAME=DIMS", repeat=True)

    def __post_init__(self) -> None:
        positive("samples", self.samples, example=128)
        positive("batch_size", self.batch_size, example=16)
        if isinstance(self.input_shape, str):
            object.__setattr__(self, "input_shape", (self.input_shape,))


@dataclass(frozen=True)
class Runtime:
    """How onnxruntime runs."""

    threads: int | None = option(None, "onnxruntime intra-op threads (default: onnxruntime's choice).")

    def __post_init__(self) -> None:
        positive("threads", self.threads, example=1)


class Metric(enum.Enum):
    AUTO = "auto"
    TOP1 = "top1"
    COSINE = "cosine"


@dataclass(frozen=True)
class Gates:
    """How fidelity is judged (which output, which metric) and the quality gates on the written
    model: a miss exits 3 and the output is still written."""

    max_drop: float | None = option(None, "Fail (exit 3) if accuracy drops by more than D (with labels; 0.01 or "
                                          "1% = one point); without labels, if top-1 agreement (or cosine) is "
                                          "below 1-D.", metavar="D", percent=True)
    min_agreement: float | None = option(None, "Fail (exit 3) if top-1 agreement with the original (cosine "
                                               "similarity for outputs that are not class scores) is below A, "
                                               "e.g. 0.99 or 99%.", metavar="A", percent=True)
    metric: str = option("auto", "The fidelity headline the gates judge: top-1 agreement of class scores, or the "
                                 "cosine similarity of the outputs (embeddings, maps, ...); auto = top-1 for "
                                 "[N, C] scores, cosine for everything else (an [N, C] output that is normalized, "
                                 "pooled or a tanh is an embedding).", choices=Metric)
    judge: str | None = option(None, "The model output the headline and the gates judge (default: the one that moved "
                                       "most; with labels, the first).",
                               metavar="OUTPUT")

    def __post_init__(self) -> None:
        object.__setattr__(self, "metric", choice("metric", self.metric, Metric))
        for name in ("max_drop", "min_agreement"):
            value = getattr(self, name)
            if value is None:
                continue
            v = percent(name, value)
            if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                shown = value if isinstance(value, str) else f"{value:g}" if isinstance(value, float) else value
                raise ConfigError(f"{spell_value(name, shown)} is outside 0..1",
                                  f"give a fraction, e.g. {spell_value(name, 0.01)} (or 1%)")
            object.__setattr__(self, name, float(v))


@dataclass(frozen=True)
class Holdout:
    """Which samples of --data the written model is judged on (fidelity and gates)."""

    holdout: float | None = option(None, "Fraction of --data kept out of the compression to measure fidelity and "
                                         "the gates on samples the model was not fitted to, e.g. 0.25 (default: "
                                         "0.25 when a gate is given and --data has 32 or more samples, else 0: "
                                         "fitted samples flatter calibrated methods).", metavar="F", percent=True)

    def __post_init__(self) -> None:
        if self.holdout is None:
            return
        v = percent("holdout", self.holdout)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
            raise ConfigError(f"{spell_value('holdout', self.holdout)} is outside 0..1",
                              f"give the fraction to hold out, e.g. {spell_value('holdout', 0.25)}")
        object.__setattr__(self, "holdout", float(v))


def percent(name: str, value) -> float:
    """0.01, '0.01' or '1%' -> 0.01 (anything else is returned for the range check to refuse)."""
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text.rstrip("%")) / (100.0 if text.endswith("%") else 1.0)
        except ValueError:
            raise ConfigError(f"{spell_value(name, value)} is not a fraction",
                              "write 0.01 or 1%") from None
    return value


@dataclass(frozen=True)
class Output:
    """Where a writing command puts its result."""

    output: str | None = option(None, "Output file (default: beside the input, named after what was done, e.g. "
                                      "<stem>.prune90.onnx).", metavar="FILE", cli="-o/--output")
    force: bool = option(False, "Allow -o to name the input file (it is replaced atomically).", flag=True)

