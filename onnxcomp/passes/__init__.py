"""Compression passes: one file per pass; see base.py for the abstraction."""
