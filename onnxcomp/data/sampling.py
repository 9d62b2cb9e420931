"""Taking the first samples of a calibration source, in batches."""
from __future__ import annotations

from typing import Iterable, Iterator


def limit_samples(data: Iterable[dict], n: int) -> Iterator[dict]:
    """Batches of ``data`` until ``n`` samples have been given (the last one cut to fit)."""
    given = 0
    for batch in data:
        k = len(next(iter(batch.values())))
        take = min(k, n - given)
        yield {name: arr[:take] for name, arr in batch.items()}
        given += take
        if given >= n:
            return


def take_samples(data: Iterable[dict], n: int) -> list[dict]:
    """The first ``n`` samples of a data source, as a list of batches."""
    return list(limit_samples(data, n))
