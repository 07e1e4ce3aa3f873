"""Kubernetes resource quantities ("500m", "64Gi", 8) as exact numbers.

The API compares a user's request with their limit (a pod whose request exceeds its
limit is refused at creation, long after ``kubectl apply`` said yes), so the spec
needs the same arithmetic the API server's CEL ``quantity()`` does.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

# The API server's own grammar of a quantity (as controller-gen emits it for resource.Quantity).
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
# The same without a minus sign: every quantity of a job (CPU, memory, a volume's size) is an amount.
NON_NEGATIVE_QUANTITY_PATTERN = r"^\+?" + QUANTITY_PATTERN.removeprefix(r"^(\+|-)?")

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
            "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
            "P": Decimal("1e15"), "E": Decimal("1e18")}  # fmt: skip
_SPLIT = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(.*)$")


def parse_quantity(value: int | str) -> Decimal:
    """The quantity's value in base units (cores, bytes). Raises ValueError on anything else."""
    text = str(value)
    if not re.match(QUANTITY_PATTERN, text):
        raise ValueError(f"{text!r} is not a Kubernetes quantity (e.g. 8, 500m, 64Gi)")
    match = _SPLIT.match(text)
    assert match is not None  # QUANTITY_PATTERN matched
    number, suffix = Decimal(match.group(1)), match.group(2)
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix in _DECIMAL:
        return number * _DECIMAL[suffix]
    try:
        return number * Decimal(10) ** Decimal(suffix[1:])  # an exponent: 1e3, 5E-2
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a Kubernetes quantity") from None
