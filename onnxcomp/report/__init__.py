"""Presenting results: text tables, JSON, plots."""
from onnxcomp.report.tables import fmt_bytes, fmt_count, fmt_pct, fmt_ratio, table, to_json

__all__ = ["fmt_bytes", "fmt_count", "fmt_pct", "fmt_ratio", "table", "to_json"]
