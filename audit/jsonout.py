"""JSON for other programs to read: strict JSON, which has no NaN or infinity."""

from __future__ import annotations

import json
import math
from typing import Any


def finite(value: Any) -> Any:
    """`value` with every float that is not finite (NaN, infinity) as None, in dicts, lists and
    tuples at any depth: `json.dumps` would write them as NaN or Infinity, which JSON readers
    other than Python's refuse. Where such a figure matters, its finding or note says so."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


def dumps(value: Any, **options: Any) -> str:
    """`json.dumps` of `finite(value)`, strict (a stray non-finite number is an error, not NaN)."""
    return json.dumps(finite(value), allow_nan=False, **options)
