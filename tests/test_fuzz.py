"""Fuzzing: damaged and hostile model files never crash onnxcomp, never leave partial output.

Every example takes a tiny valid fixture, applies up to three structural mutations (dropped
inputs and outputs, corrupted shapes, wrong dtypes, removed initializers, bad attribute values,
escaping external data, NaN weights, ...) and sometimes a byte-level one (truncation, flipped or
inserted bytes), then runs a command in-process. The contract (tests/fuzzing.py): exit 0, 2 or 3;
at most one stderr line, ``error: ...`` on failure; no traceback; the input untouched; nothing
but the expected output left in the folder. Derandomized, so CI runs the same examples each time;
``benchmarks/fuzz_soak.py`` runs many more.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from . import fuzzing as F

LOAD_EXAMPLES = 600    # inspect: the load path every command shares (~5 ms an example)
WRITE_EXAMPLES = 400   # writing commands and compare (~20-100 ms an example)
WRITERS = ["prune", "prune-structured", "cluster", "factorize", "depthwise", "compress", "compare", "pack"]
SETTINGS = dict(deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])


def _run(command: str, case: tuple[str, bytes, list[str]], capfd) -> int:
    name, data, _ = case
    with tempfile.TemporaryDirectory(prefix="onnxcomp-fuzz-") as tmp:
        folder = Path(tmp)
        model = folder / "model.onnx"
        model.write_bytes(data)
        original = folder / "orig.onnx"
        original.write_bytes(F.FIXTURE_BYTES[name])
        return F.check_contract(command, folder, model, original, fd_err=lambda: capfd.readouterr().err).code


def test_fuzz_load_and_inspect(capfd):
    codes: list[int] = []

    @settings(max_examples=LOAD_EXAMPLES, **SETTINGS)
    @given(case=F.mutated_models())
    def check(case):
        codes.append(_run("inspect", case, capfd))

    check()
    assert len(codes) >= LOAD_EXAMPLES
    assert codes.count(0) > 10 and codes.count(2) > 100  # both outcomes are exercised


def test_fuzz_writing_commands(capfd):
    codes: dict[str, list[int]] = {c: [] for c in WRITERS}

    @settings(max_examples=WRITE_EXAMPLES, **SETTINGS)
    @given(case=F.mutated_models(), command=st.sampled_from(WRITERS))
    def check(case, command):
        codes[command].append(_run(command, case, capfd))

    check()
    assert sum(map(len, codes.values())) >= WRITE_EXAMPLES
    assert all(codes[c] for c in WRITERS)
    assert sum(v.count(0) for v in codes.values()) > 5  # some mutants are still valid and get written
