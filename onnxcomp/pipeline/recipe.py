"""Recipes: a replayable list of compression steps, stored as YAML.

```yaml
onnxcomp_recipe: 1
steps:
  - structured: {ratio: 0.3}
  - prune: {sparsity: 0.8}
  - cluster: {bits: 5}
  - int8: {}
encoding: auto
correction: auto
calib_samples: 96
```
Steps run in order on the same model with dense intermediate weights; with real calibration data
every changed layer's output channels are then refitted once (``correction``: auto = affine,
bias or none; clustered layers get the shift only; see :mod:`onnxcomp.passes.correction`), and the final model is encoded once (each weight
in its smallest encoding). The same recipe replays on the same model
or on a retrained one in a deployment pipeline (``onnxcomp compress MODEL --recipe FILE``).
``calib_samples`` (optional): only the first N calibration samples are used - ``onnxcomp auto``
records the samples it calibrated on (it holds the rest out), so a replay with the same data
file writes the same model.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from onnxcomp.io.model import Model, ModelLike, as_model
from onnxcomp.errors import ConfigError

VERSION = 1
STEPS = ("structured", "factorize", "depthwise", "prune", "cluster", "int8")


def _yaml():
    try:
        import yaml
    except ImportError:  # pragma: no cover - pyyaml is a dependency
        raise ConfigError("recipes need PyYAML", "pip install pyyaml") from None
    return yaml


def validate(recipe: Any, origin: str = "recipe") -> dict:
    """Check the structure; raise a one-line ConfigError naming the problem."""
    if not isinstance(recipe, dict) or recipe.get("onnxcomp_recipe") != VERSION:
        raise ConfigError(f"{origin} is not an onnxcomp recipe (version {VERSION})",
                          "start it with 'onnxcomp_recipe: 1' (see onnxcomp auto)")
    steps = recipe.get("steps")
    if not isinstance(steps, list) or not steps:
        raise ConfigError(f"{origin} has no steps", "add a 'steps:' list, e.g. - prune: {sparsity: 0.8}")
    for i, step in enumerate(steps):
        if not isinstance(step, dict) or len(step) != 1 or next(iter(step)) not in STEPS:
            raise ConfigError(f"{origin}: step {i + 1} is not one of {', '.join(STEPS)}",
                              "write each step as '- NAME: {options}'")
        params = next(iter(step.values())) or {}
        if not isinstance(params, dict):
            raise ConfigError(f"{origin}: step {i + 1} options are not a mapping",
                              "write options as {key: value}")
    n = recipe.get("calib_samples")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ConfigError(f"{origin}: calib_samples {n!r} is not a positive whole number",
                          "write e.g. 'calib_samples: 96', or drop the line to use every sample")
    return recipe


def load(path: str | os.PathLike) -> dict:
    """Read and validate a recipe file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"recipe {p} does not exist", "check the path (onnxcomp auto writes one)")
    try:
        data = _yaml().safe_load(p.read_text())
    except Exception as exc:  # noqa: BLE001 - YAML syntax errors: one line
        raise ConfigError(f"recipe {p} is not valid YAML ({str(exc).splitlines()[0]})",
                          "fix the file or regenerate it with onnxcomp auto") from None
    return validate(data, str(p))


def dump(recipe: dict, path: str | os.PathLike) -> Path:
    """Write a recipe as YAML (atomically)."""
    validate(recipe)
    from onnxcomp.io import atomic_file

    return atomic_file(path, _yaml().safe_dump(recipe, sort_keys=False).encode())


def make(steps: list[tuple[str, dict]], **extra: Any) -> dict:
    """A recipe dict from (step, options) pairs."""
    return {"onnxcomp_recipe": VERSION, "steps": [{k: dict(v)} for k, v in steps], **extra}


def _step(kind: str, model: Model, params: dict, data: Any, threads: int | None,
          clustered: set[str] | None = None) -> Model:
    """Run one recipe step; the names of clustered weights are added to ``clustered``."""
    from onnxcomp import api

    try:
        if kind == "prune":  # with data: its own affine correction, before any clustering
            return api.prune(model, data=data, encoding="dense", threads=threads, **params).model
        if kind == "structured":
            return api.prune_channels(model, data=data, threads=threads, **params).model
        if kind == "factorize":
            return api.factorize(model, data=data, threads=threads, **params).model
        if kind == "depthwise":
            return api.depthwise(model, data=data, threads=threads, **params).model
        if kind == "cluster":
            c = api.cluster(model, data=data, encoding="dense", threads=threads, **params)
            if clustered is not None:
                clustered.update(ch.name for ch in c.result.applied)
            return c.model
        from onnxcomp.passes.int8 import quantize_int8

        return quantize_int8(model, data, **params)
    except TypeError as exc:  # an unknown option name in the recipe
        raise ConfigError(f"recipe step {kind}: {exc}", f"check the option names of {kind}") from None


def apply(model: ModelLike, recipe: dict, *, data: Any = None, threads: int | None = None) -> Model:
    """Run every step of ``recipe`` on a copy of ``model``; return the encoded result."""
    from onnxcomp.encode import encode_weights
    from onnxcomp.pipeline.run import as_data

    validate(recipe)
    m = as_model(model)
    data = as_data(data, m)
    random = data is not None and data.random
    if data is not None and recipe.get("calib_samples"):
        from onnxcomp.data.sampling import take_samples

        data = take_samples(data, int(recipe["calib_samples"]))
    current, clustered = m, set()
    for step in recipe["steps"]:
        kind, params = next(iter(step.items()))
        current = _step(kind, current, dict(params or {}), data, threads, clustered)
    out = current.copy()
    out.path = None
    if recipe.get("correction", "auto") != "none" and data is not None and not random:
        _correct(m, out, data, recipe.get("correction", "auto"), threads, clustered)
    if not any("int8" in s for s in recipe["steps"]):
        encode_weights(out.proto, encoding=recipe.get("encoding", "auto"))
    return out


def _correct(original: Model, out: Model, data: Any, mode: str, threads: int | None,
             clustered: set[str] = frozenset()) -> None:
    """Per-channel output correction of every weight the steps changed (same name and shape).

    Pruned weights get scale and shift (zeros stay zeros). Clustered weights are left as the
    cluster step corrected them (its scales live in the codebooks, which any further scaling
    would break; a second, shift-only refit measured worse: noisy per-class shifts).
    """
    import numpy as np

    from onnxcomp.passes.correction import correct
    from onnxcomp.graph.weights import find_weights

    before = {w.name: w for w in find_weights(original.proto)}
    changed = []
    for w in find_weights(out.proto):
        if w.name not in before or w.name in clustered or w.is_bias or w.shape != before[w.name].shape or \
                w.source == "constant_of_shape":
            continue
        if not np.array_equal(w.values(), before[w.name].values()):
            changed.append(w.name)
    if changed:
        correct(original.proto, out.proto, changed, data, mode="affine" if mode == "auto" else mode,
                threads=threads)
