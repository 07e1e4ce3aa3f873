"""Small data sets bundled with the trainer (the local runner's embedded default)."""

from pathlib import Path

PII_DELEGATION = Path(__file__).parent / "pii_delegation"
