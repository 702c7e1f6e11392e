"""lopt: meta-train learned optimizers with online evolution strategies.

The public surface is small: `lopt.estimators` (NRES, PES and the rest of the
online ES family over any `lopt.systems.UnrolledSystem`), and, for users of a
trained optimizer, `lopt.load_optimizer`.
"""

import os

# TensorFlow (which tfds imports to read datasets) prints C++ INFO notices
# (oneDNN, CPU features) as it loads, before any Python logging can filter
# them; keep those off unless the environment asks for them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

__version__ = "0.1.0"

__all__ = ["load_optimizer"]


def __getattr__(name: str):
  # Lazy, so that `import lopt.estimators` does not pull in orbax and flax.
  if name == "load_optimizer":
    from lopt.export import load_optimizer

    return load_optimizer
  raise AttributeError(f"module 'lopt' has no attribute {name!r}")
