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
bias or none; see :mod:`onnxcomp.passes.correction`), and the final model is encoded once (in
``encoding``; ``auto`` measures onnxruntime's load, so which weights it keeps dense can differ
between runs, the values cannot). The same recipe replays on the same model
or on a retrained one in a deployment pipeline (``onnxcomp compress MODEL --recipe FILE``).
``calib_samples`` (optional): only the first N calibration samples are used - ``onnxcomp auto``
records the samples it calibrated on (it holds the rest out), so a replay with the same data
file writes the same model.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from onnxcomp.config import STEPS, CorrectionConfig, build
from onnxcomp.data.sampling import take_samples
from onnxcomp.errors import ConfigError
from onnxcomp.io.model import ModelLike, as_model
from onnxcomp.pipeline.run import Result, as_data, run

VERSION = 1


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


def configs(recipe: dict) -> list:
    """The recipe's steps as step configs (an unknown option is a one-line ConfigError)."""
    out = []
    for i, step in enumerate(recipe["steps"]):
        kind, params = next(iter(step.items()))
        try:
            out.append(build(STEPS[kind], dict(params or {}), step=f"recipe step {i + 1} ({kind})"))
        except TypeError as exc:  # a value of the wrong kind
            raise ConfigError(f"recipe step {i + 1} ({kind}): {exc}", f"check the options of {kind}") from None
    return out


def apply(model: ModelLike, recipe: dict, *, data: Any = None, threads: int | None = None,
          progress: Any = None, memo: dict | None = None) -> Result:
    """Run every step of ``recipe`` on a copy of ``model`` through the runner; the encoded Result.

    With real data, each prune/cluster step's changed layers are refitted (``correction``) and,
    at the end, every changed layer that is not clustered once more (clustered layers keep the
    refit their cluster step made inside their codebooks). ``memo``: see :func:`run`.
    """
    validate(recipe)
    steps = configs(recipe)
    m = as_model(model)
    data = as_data(data, m)
    if data is not None and recipe.get("calib_samples"):
        data = take_samples(data, int(recipe["calib_samples"]))
    correction = CorrectionConfig(recipe.get("correction", "auto"))
    final = correction if correction.correction != "none" else None
    return run(m, steps, data=data, correction=correction, final_correction=final,
               encoding=recipe.get("encoding", "auto"), threads=threads, progress=progress, memo=memo)
