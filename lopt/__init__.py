"""lopt: meta-train learned optimizers with online evolution strategies.

What a user imports:

* `lopt.load_optimizer(path_or_name, num_steps=T)`: a trained learned
  optimizer as an `optax.GradientTransformation`;
* `lopt.learned`: the learned optimizer itself (`LOptConfig`,
  `learned_optimizer`, `init_theta`, `adam_baseline`);
* `lopt.estimators`: NRES, PES and the rest of the online ES family, over
* `lopt.systems`: any `UnrolledSystem`, and the toy systems of the papers;
* `lopt.train.train_and_evaluate(config, workdir)`: meta-training, as
  `python -m lopt.main` runs it.

Everything else is internal to those and may change between 0.x releases.
The subpackages load on first use, so `import lopt.estimators` does not pull
in orbax or tfds.
"""

import importlib
import os

# TensorFlow (which tfds imports to read datasets) prints C++ INFO notices
# (oneDNN, CPU features) as it loads, before any Python logging can filter
# them; keep those off unless the environment asks for them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

__version__ = "0.1.0"

_SUBPACKAGES = ("estimators", "learned", "systems", "train")

__all__ = ["load_optimizer", *_SUBPACKAGES]


def __getattr__(name: str):
  if name == "load_optimizer":
    from lopt.export import load_optimizer

    return load_optimizer
  if name in _SUBPACKAGES:
    return importlib.import_module(f"lopt.{name}")
  raise AttributeError(f"module 'lopt' has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(__all__))
