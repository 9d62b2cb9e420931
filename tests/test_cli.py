"""CLI conventions: help, version, unknown options, exit codes."""
from onnxcomp.cli import main

from . import models as M


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    assert "inspect" in capsys.readouterr().out


def test_a_command_default_replaces_the_fields_own_in_help(capsys):
    """compress prunes 0.9 by default, prune 0.5: each --help states its own default, and only it."""
    import re

    assert main(["compress", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    sparsity = re.search(r"--sparsity FLOAT (.*?) --", text).group(1)
    assert "[default: 0.9]" in sparsity and "0.5" not in sparsity
    assert main(["prune", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default 0.5)" in re.search(r"--sparsity FLOAT (.*?) --", text).group(1)


def test_unknown_option_is_one_line_exit_2(capsys):
    assert main(["inspect", "--bogus"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--bogus" in err


def test_unknown_command(capsys):
    assert main(["frobnicate"]) == 2
    assert "frobnicate" in capsys.readouterr().err


def test_progress_bars_per_layer_on_a_terminal_and_none_when_quiet(tmp_path, monkeypatch, capsys):
    """A calibrated command draws one bar per engine walk on a terminal's stderr; --quiet silences it."""
    import sys

    src = tmp_path / "m.onnx"
    src.write_bytes((M.MODELS / "resnet_digits.onnx").read_bytes())
    calib = str(M.MODELS / "digits_calib.npz")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    argv = ["prune", str(src), "--sparsity", "0.5", "--data", calib, "--samples", "16", "-o", str(tmp_path / "o.onnx")]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "correction" in err and "15/15" in err and "layer" in err
    assert main(argv + ["--force", "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_no_command_declares_an_option_twice():
    """Options are generated from the config fields: two fields may not land on one flag or name."""
    from onnxcomp.cli.app import cli

    for name, cmd in cli.commands.items():
        dests = [p.name for p in cmd.params]
        flags = [o for p in cmd.params for o in p.opts + p.secondary_opts]
        assert len(dests) == len(set(dests)) and len(flags) == len(set(flags)), name


def test_python_dash_m_runs_the_same_cli(tmp_path):
    """``python -m onnxcomp`` works like the console script (exit codes, one-line errors)."""
    import subprocess
    import sys

    missing = tmp_path / "missing.onnx"
    proc = subprocess.run([sys.executable, "-m", "onnxcomp", "inspect", str(missing)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "missing.onnx" in proc.stderr


def test_every_command_reading_data_can_be_quiet():
    """Each command that runs calibration data (and so may run long) takes --quiet."""
    from onnxcomp.cli.app import cli

    reading = [n for n, cmd in cli.commands.items() if any(p.name == "data" for p in cmd.params)]
    assert {"prune", "cluster", "quantize", "sensitivity", "auto"} <= set(reading)
    assert [n for n in reading if not any(p.name == "quiet" for p in cli.commands[n].params)] == []


def test_sensitivity_draws_a_bar_per_layer_and_quiet_silences_it(tmp_path, monkeypatch, capsys):
    import sys

    calib = str(M.MODELS / "digits_calib.npz")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    argv = ["sensitivity", str(M.MODELS / "resnet_digits.onnx"), "--data", calib, "--samples", "4", "--levels", "0.5"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "sensitivity" in captured.err and "layer" in captured.err
    assert "sensitivity" in captured.out
    assert main(argv + ["--quiet"]) == 0
    assert capsys.readouterr().err == ""
