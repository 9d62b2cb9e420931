"""Taking the first samples of a calibration source, in batches, and the model's batch unit.

A model whose inputs fix the batch dimension (``x[2, 3, 8, 8]``) runs only whole batches of
that size: every place that counts, cuts or splits samples rounds to a multiple of this *unit*
(at least one batch), so every command feeds such a model the same way.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator


def batch_unit(model_or_data: Any) -> int:
    """The fixed leading dim of the model's (or the data's) inputs, 1 when the batch is dynamic."""
    unit = getattr(model_or_data, "unit", None)
    if unit is not None:
        return int(unit)
    from onnxcomp.data.sources import fixed_batch, model_inputs

    return fixed_batch(model_inputs(model_or_data)) or 1


def whole(n: int, unit: int) -> int:
    """``n`` samples rounded up to whole batches of ``unit`` (at least one)."""
    unit = max(1, int(unit))
    return max(unit, -(-int(n) // unit) * unit)


def batch_len(batch: dict) -> int:
    """Samples in one batch."""
    return len(next(iter(batch.values())))


def limit_samples(data: Iterable[dict], n: int, unit: int | None = None) -> Iterator[dict]:
    """Batches of ``data`` until ``n`` samples have been given (the last one cut to fit), ``n``
    rounded up to whole batches of the unit (``data``'s own when not given)."""
    n = whole(n, unit if unit is not None else getattr(data, "unit", 1))
    given = 0
    for batch in data:
        k = batch_len(batch)
        take = min(k, n - given)
        yield {name: arr[:take] for name, arr in batch.items()}
        given += take
        if given >= n:
            return


def take_samples(data: Iterable[dict], n: int, unit: int | None = None) -> list[dict]:
    """The first ``n`` samples of a data source, as a list of batches (see :func:`limit_samples`)."""
    return list(limit_samples(data, n, unit))


def skip_samples(data: Iterable[dict], n: int, unit: int | None = None) -> list[dict]:
    """The batches of ``data`` after its first ``n`` samples (a batch cut where they end), ``n``
    rounded up to whole batches of the unit: the part :func:`take_samples` does not take."""
    n = whole(n, unit if unit is not None else getattr(data, "unit", 1))
    out, seen = [], 0
    for batch in data:
        k = batch_len(batch)
        if seen + k > n:
            start = max(0, n - seen)
            out.append({name: arr[start:] for name, arr in batch.items()})
        seen += k
    return out
