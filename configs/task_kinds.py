"""Single-task configs for the inner tasks beyond image classifiers.

    python -m lopt.main --config=configs/task_kinds.py:transformer --workdir=/tmp/lm
    python -m lopt.main --config=configs/task_kinds.py:autoencoder --workdir=/tmp/ae

`:<kind>` picks one (the default is `transformer`):

* `transformer`: a causal transformer language model, 2 pre-LayerNorm
  blocks of width 64 and 4 heads, next-byte loss on windows of 64 bytes of
  the Python standard library's source (`python_stdlib`), batch 32;
* `autoencoder`: an MLP autoencoder 64-128-32-128-64 on the 8x8 digits,
  Bernoulli loss on the pixel intensities;
* `regression`: an MLP 10-64-64-1 on scikit-learn's diabetes table, MSE on
  the standardised target, batch 32;
* `resnet`: a residual CNN with GroupNorm, stages of 8 and 16 channels, on
  the digits upscaled to 16x16.

Everything else is configs/default.py's, with the `adaptive` learned
optimizer of the generalist (each tensor adapts its own learning rate,
which models of these scales need).
"""

import os

import ml_collections

from lopt.experiment import load_config

_BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.py")

#: The task fields of each kind.
KINDS = {
  "transformer": dict(
    model="transformer",
    dataset="python_stdlib",
    hidden=(64, 64),
    heads=4,
    seq_len=64,
    batch_size=32,
  ),
  "autoencoder": dict(
    model="autoencoder", hidden=(128, 32), reconstruction="bernoulli"
  ),
  "regression": dict(
    model="mlp", dataset="diabetes", hidden=(64, 64), batch_size=32
  ),
  "resnet": dict(
    model="resnet", hidden=(8, 16), norm="group", image_size=16, batch_size=64
  ),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  kind = arg or "transformer"
  if kind not in KINDS:
    raise ValueError(
      f"configs/task_kinds.py:{kind}: unknown kind; valid: {sorted(KINDS)}"
    )
  config = load_config(_BASE)
  config.task.heads = 4
  config.task.seq_len = 64
  config.task.norm = "layer"
  config.task.reconstruction = "bernoulli"
  for field, value in KINDS[kind].items():
    config.task[field] = value
  config.lopt.kind = "adaptive"
  return config
