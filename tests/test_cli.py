"""CLI conventions: help, version, unknown options, exit codes."""
from onnxcomp.cli import main


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    assert "inspect" in capsys.readouterr().out


def test_unknown_option_is_one_line_exit_2(capsys):
    assert main(["inspect", "--bogus"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--bogus" in err


def test_unknown_command(capsys):
    assert main(["frobnicate"]) == 2
    assert "frobnicate" in capsys.readouterr().err
