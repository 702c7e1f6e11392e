"""lopt: meta-train learned optimizers with online evolution strategies.

The public surface is small: `lopt.estimators` (NRES, PES and the rest of the
online ES family over any `lopt.systems.UnrolledSystem`), and, for users of a
trained optimizer, `lopt.load_optimizer`.
"""

__version__ = "0.1.0"
