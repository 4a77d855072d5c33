"""Strict JSON for every ``--json`` output: no NaN or Infinity, integers as integers.

A number that is not finite becomes ``null``, and the object holding it gets a ``null_reasons``
entry saying why (the command's reason for that field, or a generic one). numpy and torch
scalars become plain numbers; a float that holds a whole number in a field named as a count or
index (``n``, ``step``, ``layer`` ...) becomes an int.

>>> print(dumps({"n": 3.0, "ratio": float("nan")}, {"ratio": "undefined for one sample"}, indent=None))
{"n": 3, "ratio": null, "null_reasons": {"ratio": "undefined for one sample"}}
"""

from __future__ import annotations

import json
import math
from typing import Any

INTEGER_FIELDS = {
    "n",
    "n_chains",
    "n_latents",
    "n_per_difficulty",
    "steps",
    "step",
    "latent_step",
    "layer",
    "position",
    "source_position",
    "trace",
    "count",
    "seed",
    "head",
}
GENERIC_REASON = "not a finite number: undefined for this input"
_MISSING = object()


def clean(obj: Any, reasons: dict[str, str] | None = None, key: str | None = None) -> Any:
    """``obj`` as plain JSON-ready Python with no NaN or Infinity (see the module docstring)."""
    reasons = reasons or {}
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # numpy / torch scalars and arrays
        obj = obj.tolist()
    if isinstance(obj, dict):
        out: dict = {}
        why: dict[str, str] = {}
        for k, v in obj.items():
            value = clean(v, reasons, str(k))
            if value is _MISSING:
                out[str(k)] = None
                why[str(k)] = reasons.get(str(k), GENERIC_REASON)
            else:
                out[str(k)] = value
        if why:
            out["null_reasons"] = {**(out.get("null_reasons") or {}), **why}
        return out
    if isinstance(obj, (list, tuple)):
        values = [clean(v, reasons, key) for v in obj]
        return [None if v is _MISSING else v for v in values]
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, float):
        if not math.isfinite(obj):
            return _MISSING
        if key in INTEGER_FIELDS and obj.is_integer():
            return int(obj)
        return obj
    return str(obj)


def dumps(obj: Any, reasons: dict[str, str] | None = None, indent: int | None = 1) -> str:
    """Strict JSON text of ``obj``; a top-level non-finite number is refused (it has no field to explain it)."""
    value = clean(obj, reasons)
    if value is _MISSING:
        raise ValueError("a bare non-finite number has no JSON form")
    return json.dumps(value, indent=indent, allow_nan=False, ensure_ascii=False)
