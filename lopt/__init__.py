"""lopt: meta-train learned optimizers with online evolution strategies.

The public surface is small: `lopt.estimators` (NRES, PES and the rest of the
online ES family over any `lopt.systems.UnrolledSystem`), and, for users of a
trained optimizer, `lopt.load_optimizer`.
"""

__version__ = "0.1.0"

__all__ = ["load_optimizer"]


def __getattr__(name: str):
  # Lazy, so that `import lopt.estimators` does not pull in orbax and flax.
  if name == "load_optimizer":
    from lopt.export import load_optimizer  # pylint: disable=g-import-not-at-top

    return load_optimizer
  raise AttributeError(f"module 'lopt' has no attribute {name!r}")
