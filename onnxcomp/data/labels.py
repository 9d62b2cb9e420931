"""Task labels for calibration samples: one integer class per sample."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from onnxcomp.errors import DataError

LABELS_KEY = "labels"


def load_labels(source: Any, n: int | None = None) -> np.ndarray:
    """Task labels from an array, a ``.npy`` file or a ``.npz`` (its ``labels`` array)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise DataError(f"labels file {path} does not exist", "check the --labels path")
        try:
            if path.suffix.lower() == ".npz":
                with np.load(path, allow_pickle=False) as z:
                    if LABELS_KEY not in z.files:
                        raise DataError(f"{path} has no 'labels' array (it has: {', '.join(z.files)})",
                                        "store the labels under the key 'labels'")
                    source = z[LABELS_KEY]
            else:
                source = np.load(path, allow_pickle=False)
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"{path} is not a readable labels file ({' '.join(str(exc).split())})",
                            "save the labels with numpy.save as one integer per sample") from None
    labels = np.asarray(source)
    if labels.ndim == 2 and labels.shape[1] > 1:
        labels = labels.argmax(1)  # one-hot
    labels = labels.reshape(-1) if labels.ndim == 2 else labels
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"labels have shape {labels.shape} and dtype {labels.dtype}",
                        "give one integer class index per sample, shape [N]")
    if n is not None and len(labels) < n:
        raise DataError(f"there are {len(labels)} labels for {n} samples", "give one label per sample")
    return labels
