"""Helpers shared by the test layers (importable as `support` via pytest's pythonpath)."""
