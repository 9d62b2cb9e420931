"""A voice-activity detector whose weights live inside If branches, from a PyPI wheel: size and how
far the speech probability moved, old code beside new.

    python benchmarks/silero.py [--old COMMIT] [--only silero_vad|op18_ifless|op15]

``silero-vad==6.2.3`` ships three exports of the same stateful VAD (STFT conv, four convs, an
LSTM, a sigmoid head; 16 kHz in 512-sample chunks, 8 kHz in 256): ``silero_vad.onnx`` keeps every
kernel as a ``Constant`` node inside the branches of an ``If`` on the sample rate,
``silero_vad_op18_ifless.onnx`` keeps them in the main graph and reads them inside the branches,
``silero_vad_16k_op15.onnx`` keeps the convs in the main graph and the LSTM inside an ``If``.
The model takes a scalar ``sr`` and a state with the batch on axis 1. Each command runs without
data and with ``--data``: 128 16 kHz chunks of another signal with the states the original carried
into them, stored as the model takes them (``state[2, 128, 128]``, ``sr`` a scalar; before
eaf94e2 ``--data`` refused such inputs). No speech recording ships with the packages at hand:
the signal is 20 s of synthetic vowel-like bursts (a pitch-drifting glottal pulse train through
three formant resonators) between pauses of low noise, streamed chunk by chunk with the state
carried over, at both rates (the original calls 0 % of the 16 kHz chunks and ~16 % of the 8 kHz
ones speech). Scored: mean and max |change| of the speech probability over all chunks, and the
share of chunks on the same side of 0.5 (no speed: random feeds cannot pick a branch and a chunk
size that agree). Writes benchmarks/results/silero.json.
"""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CORPUS_PYTHON, outside_main, outside_rows  # noqa: E402

WHEEL = "silero-vad==6.2.3"
MEMBERS = {"silero_vad": "silero_vad.onnx", "op18_ifless": "silero_vad_op18_ifless.onnx",
           "op15": "silero_vad_16k_op15.onnx"}
COMMANDS = [("prune --sparsity 0.5", ["prune", "--sparsity", "0.5"]), ("cluster --bits 4", ["cluster", "--bits", "4"]),
            ("compress --sparsity 0.5 --bits 4", ["compress", "--sparsity", "0.5", "--bits", "4"])]
COMMANDS += [(f"{label} --data", argv) for label, argv in COMMANDS] + [("quantize --data", ["quantize"])]
# (--data calib.npz, see calibration; quantize needs it)
CALIB_CHUNKS = 128
RATES = {16000: 512, 8000: 256}


def build(tmp: Path) -> None:
    pip = CORPUS_PYTHON.parent / "pip"
    subprocess.run([str(pip), "download", WHEEL, "--no-deps", "-q", "-d", str(tmp)], check=True)
    with zipfile.ZipFile(next(tmp.glob("silero_vad-*.whl"))) as z:
        for name, member in MEMBERS.items():
            (tmp / f"{name}.onnx").write_bytes(z.read(f"silero_vad/data/{member}"))


def _resonate(x: np.ndarray, f: float, bw: float, sr: int) -> np.ndarray:
    r, th = np.exp(-np.pi * bw / sr), 2 * np.pi * f / sr
    y, a1, a2 = np.zeros_like(x), 2 * r * np.cos(th), -r * r
    for i in range(len(x)):
        y[i] = x[i] + a1 * (y[i - 1] if i else 0.0) + a2 * (y[i - 2] if i > 1 else 0.0)
    return y / (np.abs(y).max() + 1e-9)


def signal(sr: int, seconds: float = 20, seed: int = 1) -> np.ndarray:
    """Vowel-like bursts of 0.3-0.9 s between 0.2-0.6 s pauses of low noise."""
    rng = np.random.default_rng(seed)
    n = int(sr * seconds)
    out, t = 0.003 * rng.standard_normal(n), 0
    while (s := t + int(sr * rng.uniform(0.2, 0.6))) < n:
        e = min(n, s + int(sr * rng.uniform(0.3, 0.9)))
        f0 = rng.uniform(90, 220) * (1 + 0.1 * np.sin(np.linspace(0, 3, e - s)))
        x = (np.diff(np.floor(np.cumsum(f0 / sr)), prepend=0) > 0).astype(float)
        for f, bw in zip(rng.uniform([500, 1200, 2400], [800, 1800, 3000]), (80, 120, 160)):
            x = _resonate(x, f, bw, sr)
        ramp = np.minimum(1, np.minimum(np.arange(e - s), np.arange(e - s)[::-1]) / (0.03 * sr))
        out[s:e] += 0.3 * x * ramp
        t = e
    return out.astype(np.float32)


def stream(path: Path, sr: int, x: np.ndarray, states: list | None = None) -> np.ndarray:
    """The speech probability of each chunk, the state carried from chunk to chunk (each chunk's
    input state appended to ``states`` when given)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names, n = {i.name for i in sess.get_inputs()}, RATES[sr]
    state, probs = np.zeros((2, 1, 128), np.float32), []
    for i in range(0, len(x) - n + 1, n):
        if states is not None:
            states.append(state)
        feed = {"input": x[None, i:i + n], "state": state, "sr": np.array(sr, np.int64)}
        p, state = sess.run(None, {k: v for k, v in feed.items() if k in names})[:2]
        probs.append(float(np.reshape(p, -1)[0]))
    return np.array(probs)


def calibration(model: Path, out: Path, sr: int = 16000) -> Path:
    """CALIB_CHUNKS chunks of another signal (seed 2) with the states the original carried into
    them, stored as the model takes them: input[N, 512], state[2, N, 128], sr a scalar."""
    x, states, n = signal(sr, seed=2), [], RATES[sr]
    stream(model, sr, x, states)
    pick = np.linspace(0, len(states) - 1, CALIB_CHUNKS).astype(int)
    np.savez(out, input=np.stack([x[i * n:(i + 1) * n] for i in pick]),
             state=np.concatenate([states[i] for i in pick], axis=1), sr=np.array(sr, np.int64))
    return out


def _one(name: str, tmp: Path, tools: list) -> dict:
    model = tmp / f"{name}.onnx"
    signals = {sr: signal(sr) for sr in RATES}
    ref = {sr: stream(model, sr, x) for sr, x in signals.items()}

    def score(path: Path) -> dict:
        row = {}
        for sr, x in signals.items():
            d = np.abs(stream(path, sr, x) - ref[sr])
            k = sr // 1000
            row.update({f"mean_dp_{k}k": round(float(d.mean()), 4), f"max_dp_{k}k": round(float(d.max()), 4),
                        f"same_side_{k}k": round(float(np.mean((stream(path, sr, x) > 0.5) == (ref[sr] > 0.5))), 4)})
        return row

    speech = ", ".join(f"{sr // 1000} kHz {np.mean(p > 0.5):.0%} of chunks speech" for sr, p in ref.items())
    metrics = [f"{m}_{k}k" for k in (16, 8) for m in ("mean_dp", "max_dp", "same_side")]
    calib = calibration(model, tmp / f"{name}.calib.npz")

    def args(label: str) -> list[str]:
        return ["--json", *(["--data", str(calib)] if label.endswith("--data") else [])]
    # no speed column: random feeds pick a branch whose chunk size they do not match
    return outside_rows(name, model, COMMANDS, tools, args, score, None, metrics, speech)


def main() -> None:
    outside_main(__doc__, "silero", list(MEMBERS), build, _one)


if __name__ == "__main__":
    main()
