"""Every code block of the README runs: the set-up commands are the ones CI runs, every `onnxcomp`
command exits 0, every Python block executes (outputs go to a temporary folder)."""
import contextlib
import os
import re
import shlex
from pathlib import Path

import pytest

from onnxcomp.cli import main

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(bash|python)\n(.*?)```", README, flags=re.S)


@contextlib.contextmanager
def at_root():
    old = os.getcwd()
    os.chdir(ROOT)
    try:
        yield
    finally:
        os.chdir(old)


def test_the_setup_commands_are_what_ci_runs():
    setup = [body.strip() for kind, body in BLOCKS if kind == "bash" and "python3 -m venv" in body]
    assert len(setup) == 2
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install" in setup[1] and "-e '.[test,plot]'" in setup[1] and "-e '.[test,plot]'" in ci
    assert setup[1].endswith("python -m pytest -q") and 'python" -m pytest -q' in ci
    assert "onnxcomp prune models/resnet_digits.onnx --sparsity 0.9 --data models/digits_calib.npz" in setup[0]


@pytest.mark.parametrize("i", [i for i, (k, b) in enumerate(BLOCKS) if k == "bash" and "python3 -m venv" not in b])
def test_readme_commands_run(i, tmp_path, capsys):
    with at_root():
        for line in BLOCKS[i][1].strip().splitlines():
            argv = shlex.split(line.replace("/tmp/", f"{tmp_path}/"))
            assert argv[0] == "onnxcomp"
            assert main(argv[1:]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("i", [i for i, (k, _) in enumerate(BLOCKS) if k == "python"])
def test_readme_python_runs(i, tmp_path, capsys):
    with at_root():
        exec(compile(BLOCKS[i][1].replace("/tmp/", f"{tmp_path}/"), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "sparsity=1.5 is outside 0..1" in out  # the error the block promises, in Python spelling
