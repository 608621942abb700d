"""Kubernetes resource quantities (`16Gi`, `500m`, `8e9`), read without the kubernetes client.

The operator's decision layer may not import the client (its layering contract), yet it must read
`spec.resources` the way the API server will: to refuse a typo before the worker Job's create fails with a
422, and to hand the trainer a byte count. The grammar is the API reference's ("Quantity", serialization
format): a signed decimal number, then a binary suffix (Ki..Ei), a decimal suffix (n, u, m, "", k, M..E) or a
decimal exponent (e3, E-2). tests/api/test_quantity.py checks it against kubernetes.utils.parse_quantity.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_NUMBER = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_FORM = re.compile(rf"({_NUMBER})(?:(Ki|Mi|Gi|Ti|Pi|Ei)|([numkMGTPE])|[eE]({_NUMBER}))?")
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
# The API reference caps a quantity at 2^63-1 (and its precision at nano units). Checked on the exponent before
# any arithmetic: `1e999999` must be refused at once, not computed (a million-digit number stalls the event loop).
LIMIT = 2**63 - 1
_MAX_EXPONENT = 19


def parse(value: int | str) -> Decimal:
    """The quantity's value (bytes for memory, cores for cpu); ValueError when it is not a quantity."""
    text = str(value)
    match = _FORM.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a Kubernetes quantity (e.g. 16Gi, 16G, 500m, 4)")
    number, binary, decimal, exponent = match.groups()
    if exponent is not None and "." in exponent:  # the API server takes only whole exponents
        raise ValueError(f"{text!r} is not a Kubernetes quantity (a whole exponent: 8e9)")
    scale = int(exponent) if exponent is not None else _DECIMAL.get(decimal or "", 0)
    if scale > _MAX_EXPONENT or len(number) > 40:
        raise ValueError(f"{text!r} is larger than a Kubernetes quantity can be (2^63-1)")
    try:
        value = Decimal(number) * 1024 ** _BINARY[binary] if binary else Decimal(number).scaleb(scale)
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a Kubernetes quantity (e.g. 16Gi, 16G, 500m, 4)") from None
    if abs(value) > LIMIT:
        raise ValueError(f"{text!r} is larger than a Kubernetes quantity can be (2^63-1)")
    return value
