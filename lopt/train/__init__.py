"""Meta-training: the outer loop of `python -m lopt.main`.

`train_and_evaluate(config, workdir)` runs a config to its last outer step,
resuming from the newest checkpoint in `workdir`. `outer` is the estimator
and optax update any unrolled system shares.
"""

from lopt.train.loop import train_and_evaluate

__all__ = ["train_and_evaluate"]
