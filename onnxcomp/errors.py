"""User-facing errors: each names the problem, the offending value and the fix, on one line."""
from __future__ import annotations


class OnnxCompError(Exception):
    """An error caused by the user's input, reported on one line with exit code 2.

    ``problem`` says what is wrong, ``fix`` says what to do about it. The CLI prints
    ``error: <problem>; <fix>`` and never a traceback.
    """

    exit_code = 2

    def __init__(self, problem: str, fix: str = "") -> None:
        self.problem = problem.strip().rstrip(".")
        self.fix = fix.strip().rstrip(".")
        super().__init__(self.message)

    @property
    def message(self) -> str:
        text = self.problem if not self.fix else f"{self.problem}; {self.fix}"
        return " ".join(text.split())  # always one line


class ModelLoadError(OnnxCompError):
    """The model file cannot be read or is not a model onnxruntime can run."""


class ModelSaveError(OnnxCompError):
    """The output cannot be written where asked."""


class ConfigError(OnnxCompError):
    """An option or config value is out of range or inconsistent."""


class DataError(OnnxCompError):
    """Calibration or evaluation data does not match the model's inputs."""


class UnsupportedModelError(OnnxCompError):
    """The model uses something this command cannot handle."""


class QualityGateError(OnnxCompError):
    """A quality gate (--max-drop, --min-agreement) was not met; the output was still written."""

    exit_code = 3


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first meaningful line of a library's exception message (for one-line errors)."""
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()] or [type(exc).__name__]
    line = lines[0] if not lines[0].endswith(":") or len(lines) == 1 else f"{lines[0]} {lines[1]}"
    return line if len(line) <= limit else line[:limit] + "..."
