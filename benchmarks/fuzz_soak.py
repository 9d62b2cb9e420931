"""Long fuzzing soak: many more mutated models through every command than CI runs.

    python benchmarks/fuzz_soak.py --examples 20000 [--commands inspect,prune,...] [--seed N]

Runs the same mutations and contract as tests/test_fuzz.py (tests/fuzzing.py), but random
(seeded) rather than derandomized, and collects every contract violation instead of stopping at
the first: it prints a table of outcomes per command and each distinct failure (exception type
and location, or the broken assertion) with the mutations that caused it, and writes
benchmarks/results/fuzz_soak.json. Exit 1 when anything failed.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import seed as hypothesis_seed  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests import fuzzing as F  # noqa: E402

COMMANDS = ["inspect", "prune", "prune-structured", "cluster", "factorize", "depthwise", "compress",
            "compare", "pack"]


def soak(examples: int, commands: list[str], seed: int) -> dict:
    outcomes: collections.Counter = collections.Counter()
    failures: dict[str, list[dict]] = collections.defaultdict(list)

    @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(case=F.mutated_models(), command=st.sampled_from(commands))
    def one(case, command):
        name, data, applied = case
        with tempfile.TemporaryDirectory(prefix="onnxcomp-soak-") as tmp:
            folder = Path(tmp)
            model = folder / "model.onnx"
            model.write_bytes(data)
            original = folder / "orig.onnx"
            original.write_bytes(F.FIXTURE_BYTES[name])
            try:
                outcomes[(command, F.check_contract(command, folder, model, original).code)] += 1
            except Exception as exc:  # noqa: BLE001 - collect every kind of failure
                frame = traceback.extract_tb(exc.__traceback__)[-1]
                key = f"{type(exc).__name__} at {Path(frame.filename).name}:{frame.lineno}"
                if isinstance(exc, AssertionError):
                    key += f" ({str(exc).split(': ', 1)[-1][:120]})"
                failures[key].append({"command": command, "fixture": name, "mutations": applied,
                                      "error": str(exc)[:500]})
                outcomes[(command, "FAIL")] += 1

    one = hypothesis_seed(seed)(one)
    t0 = time.perf_counter()
    one()
    seconds = time.perf_counter() - t0
    return {"examples": sum(outcomes.values()), "seconds": seconds, "seed": seed,
            "outcomes": {f"{c} exit {k}": n for (c, k), n in sorted(outcomes.items(), key=str)},
            "failures": {k: {"count": len(v), "examples": v[:3]} for k, v in failures.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=5000)
    ap.add_argument("--commands", default=",".join(COMMANDS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "fuzz_soak.json")
    args = ap.parse_args()
    result = soak(args.examples, args.commands.split(","), args.seed)
    print(f"{result['examples']} examples in {result['seconds']:.1f} s "
          f"({1000 * result['seconds'] / max(result['examples'], 1):.1f} ms each), seed {args.seed}")
    for key, n in result["outcomes"].items():
        print(f"  {key:32s} {n:6d}")
    for key, info in result["failures"].items():
        print(f"FAILURE x{info['count']}: {key}")
        for ex in info["examples"]:
            print(f"    {ex['command']} on {ex['fixture']} after {ex['mutations']}: {ex['error'][:200]}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.json}")
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
