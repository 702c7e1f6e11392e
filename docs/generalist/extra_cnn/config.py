"""configs/generalist.py with a seventh task: a narrow CNN on large batches.

    python -m lopt.main --config=docs/generalist/extra_cnn/config.py \
        --workdir=/tmp/extra_cnn

An experiment, not shipped (see the README's generalist section): a narrow
CNN on large batches, like the held-out elu CNN that the shipped
generalist loses. Meta-trained with it in the family, the optimizer is
still 1.42x tuned Adam on it after 1,000 outer steps, and the held-out
suite got worse (docs/generalist/extra_cnn).
"""

import os

import ml_collections

from lopt.experiment import load_config

_GENERALIST = os.path.join(
  os.path.dirname(os.path.abspath(__file__)),
  "..",
  "..",
  "..",
  "configs",
  "generalist.py",
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = load_config(_GENERALIST, arg)
  config.family.tasks.cnn_c6_c12_gelu_b128 = ml_collections.ConfigDict(
    dict(model="cnn", hidden=(6, 12), batch_size=128, horizon=500)
  )
  return config
