"""The wide generalist: one learned optimizer over every kind of inner task.

    python -m lopt.main --config=configs/wide_generalist.py --workdir=/tmp/wide
    python -m lopt.evaluate --workdir=/tmp/wide --suite=wide

configs/generalist.py's six digits classifiers, plus the kinds of model a
user trains beyond them: two causal transformer language models on the
Python standard library's bytes, two MLP autoencoders (Bernoulli and MSE
losses), an MLP regressor on scikit-learn's diabetes table and a residual
CNN with LayerNorm. Every per-step loss is divided by tuned Adam's mean
loss on its task (`family.normalizer = 'adam'`): cross-entropies of 256
bytes, pixel reconstructions and standardised squared errors then all read
as a ratio to tuned Adam, so no kind's scale dominates the meta-objective
(measured: docs/family/wide/loss_scales.json), and each task's estimate is
scaled to unit norm before the mean (`family.combine = 'unit'`).

The held-out `wide` suite (`lopt.suite.tasks.WIDE`) shares no task with
this family. Everything else is configs/generalist.py's.
"""

import os

import ml_collections

from lopt.experiment import load_config

_BASE = os.path.join(
  os.path.dirname(os.path.abspath(__file__)), "generalist.py"
)


def _task(**fields) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(fields)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = load_config(_BASE, arg)
  # The settings the new kinds read; every group below sets its own.
  config.task.heads = 4
  config.task.seq_len = 32
  config.task.norm = "layer"
  config.task.reconstruction = "bernoulli"
  tasks = config.family.tasks
  text = dict(model="transformer", dataset="python_stdlib", image_size=0)
  tasks.lm_w32_d2_s32 = _task(
    **text, hidden=(32, 32), seq_len=32, batch_size=8, horizon=500
  )
  tasks.lm_w48_d1_s64 = _task(
    **text, hidden=(48,), heads=4, seq_len=64, batch_size=4, horizon=1000
  )
  tasks.ae_w64_c8_bern = _task(
    model="autoencoder", hidden=(64, 8), batch_size=64, horizon=500
  )
  tasks.ae_w96_c24_mse_16px = _task(
    model="autoencoder",
    hidden=(96, 24),
    reconstruction="mse",
    image_size=16,
    batch_size=32,
    horizon=1000,
  )
  tasks.reg_w64_relu = _task(
    dataset="diabetes",
    hidden=(64,),
    activation="relu",
    batch_size=32,
    horizon=1000,
  )
  tasks.resnet_c8_layer = _task(
    model="resnet", hidden=(8,), activation="relu", batch_size=32, horizon=500
  )
  return config
