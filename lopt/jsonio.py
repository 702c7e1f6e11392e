"""JSON for lopt's result files: numpy and jax values in, strict JSON out.

Result files (`eval.json`, `lopt.compare`'s and `lopt.analysis`'s JSON,
`lopt.bench`'s report) are read by other tools, so they are written as
strict JSON: numpy and jax scalars and arrays become Python numbers and
lists, and a non-finite number (a diverged run's loss) becomes `null`
rather than the `NaN`/`Infinity` tokens that most JSON parsers reject.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any


def finite_or_none(x: Any) -> float | None:
  """`float(x)`, or None when it is NaN or infinite."""
  x = float(x)
  return x if math.isfinite(x) else None


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """Nested mappings as one dict with dotted names: {"a.b": 1, "c": 2}."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def plain(obj: Any) -> Any:
  """`obj` with numpy/jax values as Python ones and non-finite floats None.

  Mappings become dicts (keys as strings), tuples and lists become lists,
  arrays become (nested) lists, scalars Python numbers.
  """
  if isinstance(obj, Mapping):
    return {str(k): plain(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [plain(v) for v in obj]
  if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
    return obj
  if isinstance(obj, float):
    return finite_or_none(obj)
  if hasattr(obj, "tolist"):  # numpy and jax arrays and scalars
    return plain(obj.tolist())
  raise TypeError(f"not JSON-serializable: {type(obj).__name__} {obj!r}")


def dump(obj: Any, path: str | os.PathLike[str], indent: int = 1) -> str:
  """Writes `plain(obj)` to `path` as strict JSON; returns the path."""
  with open(path, "w") as f:
    json.dump(plain(obj), f, indent=indent, allow_nan=False)
    f.write("\n")
  return os.fspath(path)
