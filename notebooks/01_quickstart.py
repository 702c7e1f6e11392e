# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # lopt quickstart
#
# Meta-train a learned optimizer with Noise-Reuse ES, load it as an optax
# transformation, and train a fresh model with it.
#
# Everything runs offline on a CPU in well under a minute: the config is
# `configs/tiny.py` (a one-hidden-layer MLP on the bundled 8x8 digits, an
# inner horizon of T = 20 steps, 4 antithetic pairs, 6 outer steps). The
# real thing is the same call with `configs/default.py` (T = 1000, minutes
# to hours), or `python -m lopt.main --config=configs/default.py
# --workdir=...` from a shell.

# %%
import os
import pathlib
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import matplotlib.pyplot as plt
import numpy as np
import optax
from absl import logging

# The config files live next to the lopt package, in the repository root;
# they are loaded by path, like `--config=configs/tiny.py` does.
ROOT = pathlib.Path.cwd().resolve()
while not (ROOT / "configs").is_dir() and ROOT != ROOT.parent:
  ROOT = ROOT.parent

import lopt
from lopt import experiment, metrics, train
from lopt.tasks import inner, models

logging.set_verbosity(logging.WARNING)  # keep the training log short

# %% [markdown]
# ## 1. Meta-train
#
# `train.train_and_evaluate(config, workdir)` is what `python -m lopt.main`
# runs: it meta-trains theta (the learned optimizer's weights) and writes
# checkpoints and `metrics.jsonl` into the workdir.

# %%
config = experiment.load_config(str(ROOT / "configs" / "tiny.py"))
print(config.estimator)
workdir = tempfile.mkdtemp(prefix="lopt_quickstart_")
train.train_and_evaluate(config, workdir)
rows = metrics.read_metrics(workdir)
for row in rows:
  print(
    {
      k: round(v, 4) if isinstance(v, float) else v
      for k, v in row.items()
      if k in ("step", "meta_loss", "grad_snr", "eval/learned/mean_train_loss")
    }
  )
# This notebook is also a test (tests/test_notebooks.py runs it): the run
# reached its last step, with finite losses.
assert max(r["step"] for r in rows) == config.outer.num_steps
logged = [
  r[k]
  for r in rows
  for k in ("meta_loss", "eval/learned/mean_train_loss")
  if k in r
]
assert len(logged) >= 4 and np.all(np.isfinite(logged)), logged

# %% [markdown]
# `meta_loss` is the mean per-step loss of the perturbed particles during
# training; `eval/learned/mean_train_loss` scores the current theta on
# held-out seeds (a fresh model trained for T steps). `grad_snr` is the
# signal-to-noise ratio of the gradient estimate: far below 1 means sigma or
# the number of particles is off.

# %%
train_rows = [r for r in rows if "meta_loss" in r]
eval_rows = [r for r in rows if "eval/learned/mean_train_loss" in r]
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(
  [r["step"] for r in train_rows],
  [r["meta_loss"] for r in train_rows],
  "o-",
  label="meta-loss (particles)",
)
ax.plot(
  [r["step"] for r in eval_rows],
  [r["eval/learned/mean_train_loss"] for r in eval_rows],
  "s-",
  label="eval: mean train loss",
)
ax.set(xlabel="outer step", ylabel="loss", title="meta-training (tiny)")
ax.legend()
plt.show()

# %% [markdown]
# ## 2. Load the learned optimizer and train a model
#
# `lopt.load_optimizer(workdir, num_steps=...)` returns an
# `optax.GradientTransformation`; `num_steps` is the length of the run it
# will drive (its schedule and progress features are relative to it). Its
# `update` needs the parameters: `tx.update(grads, state, params)`.

# %%
num_steps = 200
tx = lopt.load_optimizer(workdir, num_steps=num_steps)
# The run's dataset (digits), as every lopt entry point loads it.
arrays, digits = experiment.load_data(config)
task = models.make_task(
  "mlp",
  hidden=(32, 32),
  num_classes=10,
  input_shape=digits.image_shape,
  batch_size=64,
)


@jax.jit
def fit(arrays, key):
  """Trains one fresh model with the learned optimizer and with Adam."""
  adam_tx = optax.adam(config.eval.adam_learning_rate)
  return (
    inner.train_model(task, tx, arrays, key, num_steps),
    inner.train_model(task, adam_tx, arrays, key, num_steps),
  )


learned, adam = fit(arrays, jax.random.key(0))
print(f"learned optimizer: test accuracy {float(learned['test_accuracy']):.3f}")
print(
  f"Adam (lr {config.eval.adam_learning_rate}): test accuracy "
  f"{float(adam['test_accuracy']):.3f}"
)
# Both train the fresh model, and six outer steps leave the learned
# optimizer close to Adam (see the end of this notebook).
for result in (learned, adam):
  losses = np.asarray(result["losses"])
  assert np.all(np.isfinite(losses))
  assert losses[-20:].mean() < 0.5 * losses[:20].mean()
  assert float(result["test_accuracy"]) > 0.8
assert abs(float(learned["test_accuracy"] - adam["test_accuracy"])) < 0.05


# %%
def smooth(x, width=10):
  return np.convolve(np.asarray(x), np.ones(width) / width, mode="valid")


fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(smooth(learned["losses"]), label="learned optimizer (tiny, 6 steps)")
ax.plot(smooth(adam["losses"]), label="Adam")
ax.set(
  xlabel="training step",
  ylabel="training loss (batch, smoothed)",
  yscale="log",
  title="a fresh 32-32 MLP on digits",
)
ax.legend()
plt.show()

# %% [markdown]
# Six outer steps leave theta close to its initialisation (the 'nominal'
# learned optimizer starts as Adam with a learned, decaying learning rate),
# so expect the two curves to be close. `configs/default.py` meta-trains for
# 1,500 outer steps; `python -m lopt.evaluate --workdir=...` then compares
# the result with a whole Adam learning-rate sweep.
