"""Image folders as calibration data, with an explicit preprocessing spec.

The spec is a string (the ``--preprocess`` option) or dict with these keys, all optional:

    resize=256 | 224x224    shorter side to N keeping the aspect ratio, or exactly HxW
                            (default: exactly the model's static HxW)
    crop=224 | 224x224      center crop after resizing (default: none)
    scale=1/255             multiply the 0..255 pixel values (default 1/255)
    mean=0.485/0.456/0.406  subtract per channel after scaling (default none)
    std=0.229/0.224/0.225   divide per channel after the mean (default none)
    channels=RGB|BGR|GRAY   channel order (default: GRAY for 1 channel, else RGB)
    layout=NCHW|NHWC        default: from the model input (channels where the 1 or 3 sits)

e.g. ``--preprocess "resize=256,crop=224,mean=0.485/0.456/0.406,std=0.229/0.224/0.225"``.
Decoding needs Pillow: ``pip install onnxcomp[images]``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from onnxcomp.data.sources import InputSpec, expected
from onnxcomp.errors import ConfigError, DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".gif", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class ImagePreprocess:
    """How images become model input; see the module docstring for the spec syntax."""

    resize: tuple[int, ...] | None = None
    crop: tuple[int, int] | None = None
    scale: float = 1 / 255
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channels: str | None = None
    layout: str | None = None

    def __post_init__(self) -> None:
        if self.channels is not None and self.channels.upper() not in ("RGB", "BGR", "GRAY"):
            raise ConfigError(f"preprocess channels={self.channels!r} is unknown", "use RGB, BGR or GRAY")
        if self.layout is not None and self.layout.upper() not in ("NCHW", "NHWC"):
            raise ConfigError(f"preprocess layout={self.layout!r} is unknown", "use NCHW or NHWC")
        if self.std is not None and any(s == 0 for s in self.std):
            raise ConfigError("preprocess std has a zero", "give non-zero standard deviations")

    def describe(self) -> str:
        parts = [f"resize={'x'.join(map(str, self.resize))}" if self.resize else None,
                 f"crop={'x'.join(map(str, self.crop))}" if self.crop else None, f"scale={self.scale:.6g}",
                 f"mean={'/'.join(map(str, self.mean))}" if self.mean else None,
                 f"std={'/'.join(map(str, self.std))}" if self.std else None,
                 f"channels={self.channels}", f"layout={self.layout}"]
        return ",".join(p for p in parts if p)


def _ints(text: str, key: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.lower().replace("/", "x").split("x"))
        if not vals or len(vals) > 2 or any(v <= 0 for v in vals):
            raise ValueError
    except ValueError:
        raise ConfigError(f"preprocess {key}={text!r} is not a size", f"write {key}=224 or {key}=224x224") from None
    return vals


def _floats(text: str, key: str) -> tuple[float, ...]:
    try:
        return tuple(_number(v) for v in text.replace(":", "/").split("/")) if key != "scale" else (_number(text),)
    except ValueError:
        raise ConfigError(f"preprocess {key}={text!r} is not a number list",
                          f"write e.g. {key}=0.485/0.456/0.406") from None


def _number(text: str) -> float:
    if text.count("/") == 1 and text.startswith("1/"):
        return 1 / float(text[2:])
    return float(text)


def parse_preprocess(spec: Any) -> ImagePreprocess:
    """An ImagePreprocess from a ``key=value,...`` string, a dict or an ImagePreprocess."""
    if isinstance(spec, ImagePreprocess) or spec is None:
        return spec or ImagePreprocess()
    items = dict(spec) if isinstance(spec, dict) else {}
    if isinstance(spec, str):
        for part in filter(None, (p.strip() for p in spec.replace(";", ",").split(","))):
            key, sep, value = part.partition("=")
            if not sep:
                raise ConfigError(f"preprocess item {part!r} has no '='", "write key=value, e.g. resize=224")
            items[key.strip().lower()] = value.strip()
    known = {"resize", "crop", "scale", "mean", "std", "channels", "layout"}
    bad = [k for k in items if k not in known]
    if bad:
        raise ConfigError(f"preprocess key {bad[0]!r} is unknown", f"use {', '.join(sorted(known))}")
    kw: dict[str, Any] = {}
    for key, value in items.items():
        if not isinstance(value, str):
            kw[key] = tuple(value) if isinstance(value, (list, tuple)) else value
        elif key in ("resize", "crop"):
            kw[key] = _ints(value, key) if key == "resize" else (_ints(value, key) * 2)[:2]
        elif key == "scale":
            kw[key] = _floats(value, key)[0]
        elif key in ("mean", "std"):
            kw[key] = _floats(value, key)
        else:
            kw[key] = value.upper()
    return ImagePreprocess(**kw)


def _resolve(pre: ImagePreprocess, spec: InputSpec) -> ImagePreprocess:
    """Fill channels, layout and resize from the model input."""
    dims = spec.dims
    if len(dims) != 4:
        raise DataError(f"images need a 4-D model input but the model expects {spec.describe()}",
                        "use .npz or .npy data for this model")
    layout = pre.layout or ("NHWC" if dims[3] in (1, 3, 4) and dims[1] not in (1, 3, 4) else "NCHW")
    c, h, w = (dims[1], dims[2], dims[3]) if layout == "NCHW" else (dims[3], dims[1], dims[2])
    channels = pre.channels or ("GRAY" if c == 1 else "RGB")
    resize = pre.resize
    if resize is None and pre.crop is None:
        if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
            raise DataError(f"{spec.name} has dynamic height/width ({spec.describe()})",
                            "give the image size with --preprocess resize=HxW")
        resize = (h, w)
    return replace(pre, layout=layout, channels=channels, resize=resize)


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise ConfigError("reading images needs Pillow", "pip install onnxcomp[images]") from None
    return Image


def _load_image(path: Path, pre: ImagePreprocess, dtype: np.dtype) -> np.ndarray:
    Image = _pil()
    try:
        with Image.open(path) as im:
            im = im.convert("L" if pre.channels == "GRAY" else "RGB")
            if pre.resize and len(pre.resize) == 1:
                s, (w, h) = pre.resize[0], im.size
                im = im.resize((max(1, round(w * s / min(w, h))), max(1, round(h * s / min(w, h)))),
                               Image.BILINEAR)
            elif pre.resize:
                im = im.resize((pre.resize[1], pre.resize[0]), Image.BILINEAR)
            if pre.crop:
                (ch, cw), (w, h) = pre.crop, im.size
                left, top = max(0, (w - cw) // 2), max(0, (h - ch) // 2)
                im = im.crop((left, top, left + cw, top + ch))
            x = np.asarray(im, dtype=np.float32)
    except OSError as exc:
        raise DataError(f"{path} is not a readable image ({' '.join(str(exc).split())})",
                        "remove it from the folder or convert it to PNG/JPEG") from None
    x = x[..., None] if x.ndim == 2 else x
    x = x * pre.scale
    if pre.mean is not None:
        x = x - np.asarray(pre.mean, np.float32)
    if pre.std is not None:
        x = x / np.asarray(pre.std, np.float32)
    if pre.channels == "BGR":
        x = x[..., ::-1]
    if pre.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x).astype(dtype)


def image_folder(folder: Path, files: list[Path], specs: dict[str, InputSpec], preprocess: Any,
                 batch_size: int) -> tuple[Callable[[], Iterator[dict]], str]:
    """A batch factory over the images, and a description naming the resolved spec."""
    if len(specs) != 1:
        raise DataError(f"{folder} holds images but the model has {len(specs)} inputs",
                        f"use a .npz keyed by input name; {expected(specs)}")
    spec = next(iter(specs.values()))
    if preprocess is None:
        raise ConfigError(f"{folder} holds images but no preprocessing was given",
                          "pass --preprocess with the training transform, e.g. "
                          "'resize=256,crop=224,mean=0.485/0.456/0.406,std=0.229/0.224/0.225'")
    pre = _resolve(parse_preprocess(preprocess), spec)
    first = _load_image(files[0], pre, spec.dtype)
    want = spec.dims[1:]
    if any(isinstance(d, int) and d > 0 and d != s for d, s in zip(want, first.shape)):
        raise DataError(f"{files[0].name} becomes {'x'.join(map(str, first.shape))} after preprocessing "
                        f"but the model expects {spec.describe()}", "set resize/crop to the model's size")

    def factory() -> Iterator[dict]:
        for i in range(0, len(files), batch_size):
            yield {spec.name: np.stack([_load_image(f, pre, spec.dtype) for f in files[i:i + batch_size]])}

    return factory, f"{folder.name}/: images ({pre.describe()})"
