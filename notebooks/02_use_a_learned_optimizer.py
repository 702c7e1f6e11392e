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
# # Use a learned optimizer in your own training code
#
# A meta-trained lopt checkpoint loads as a plain
# `optax.GradientTransformation`, so it drops into any JAX training loop.
# Here it trains a Flax NNX model (through `nnx.Optimizer(model, tx,
# wrt=nnx.Param)`) and a Flax linen model, next to Adam.
#
# To stay self-contained the notebook first produces a checkpoint with the
# tiny config (seconds); point `WORKDIR` at a real meta-training workdir
# (e.g. from `make demo`) to use a trained one.

# %%
import os
import pathlib
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from absl import logging
from flax import linen as nn
from flax import nnx

# The config files live next to the lopt package, in the repository root;
# they are loaded by path, like `--config=configs/tiny.py` does.
ROOT = pathlib.Path.cwd().resolve()
while not (ROOT / "configs").is_dir() and ROOT != ROOT.parent:
  ROOT = ROOT.parent

import lopt
from lopt import experiment, train
from lopt.tasks import data

logging.set_verbosity(logging.WARNING)

# %%
WORKDIR = os.environ.get("LOPT_WORKDIR", "")
if not WORKDIR:
  WORKDIR = tempfile.mkdtemp(prefix="lopt_checkpoint_")
  train.train_and_evaluate(
    experiment.load_config(str(ROOT / "configs" / "tiny.py")), WORKDIR
  )
print("checkpoint:", WORKDIR)

# %% [markdown]
# ## Data: the bundled 8x8 digits
#
# Minibatches are drawn up front with numpy, so that every optimizer sees
# exactly the same batches.

# %%
NUM_STEPS, BATCH = 300, 64
digits = data.load_dataset("digits")
rng = np.random.default_rng(0)
index = rng.integers(0, len(digits.train.labels), (NUM_STEPS, BATCH))
xs = digits.train.images[index].reshape(NUM_STEPS, BATCH, -1)
ys = digits.train.labels[index]
test_x = digits.test.images.reshape(len(digits.test.labels), -1)
test_y = digits.test.labels


def xent(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_learned():
  # num_steps: the length of the run; the schedule is relative to it.
  return lopt.load_optimizer(WORKDIR, num_steps=NUM_STEPS)


def make_adam():
  return optax.adam(1e-2)


# %% [markdown]
# ## Flax NNX
#
# The learned optimizer needs the parameters in `update`, which
# `nnx.Optimizer` passes; `wrt=nnx.Param` is required since flax 0.11.


# %%
class NNXMLP(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(64, 32, rngs=rngs)
    self.out = nnx.Linear(32, 10, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.gelu(self.hidden(x)))


def train_nnx(tx):
  model = NNXMLP(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(lambda m: xent(m(x), y))(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(step(model, optimizer, x, y)) for x, y in zip(xs, ys)]
  accuracy = float(jnp.mean(jnp.argmax(model(test_x), -1) == test_y))
  return np.asarray(losses), accuracy


nnx_learned, nnx_learned_acc = train_nnx(make_learned())
nnx_adam, nnx_adam_acc = train_nnx(make_adam())
print(
  f"NNX   learned: final loss {nnx_learned[-20:].mean():.4f}, test acc "
  f"{nnx_learned_acc:.3f}"
)
print(
  f"NNX   Adam:    final loss {nnx_adam[-20:].mean():.4f}, test acc "
  f"{nnx_adam_acc:.3f}"
)


def check(losses, accuracy):
  """The model trained (this notebook is also a test)."""
  assert np.all(np.isfinite(losses))
  assert losses[-20:].mean() < 0.1 * losses[:20].mean()
  assert accuracy > 0.8


check(nnx_learned, nnx_learned_acc)
check(nnx_adam, nnx_adam_acc)

# %% [markdown]
# ## Flax linen
#
# With linen the parameters are a plain pytree: the usual
# `tx.init(params)` / `tx.update(grads, state, params)` loop, here inside a
# `lax.scan`.


# %%
class LinenMLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(10)(nn.gelu(nn.Dense(32)(x)))


def train_linen(tx):
  model = LinenMLP()
  params = model.init(jax.random.key(0), xs[0])["params"]

  @jax.jit
  def run(params):
    def step(carry, batch):
      params, opt_state = carry
      x, y = batch
      loss, grads = jax.value_and_grad(
        lambda p: xent(model.apply({"params": p}, x), y)
      )(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss

    (params, _), losses = jax.lax.scan(
      step, (params, tx.init(params)), (xs, ys)
    )
    return params, losses

  params, losses = run(params)
  logits = model.apply({"params": params}, test_x)
  return np.asarray(losses), float(jnp.mean(jnp.argmax(logits, -1) == test_y))


linen_learned, linen_learned_acc = train_linen(make_learned())
linen_adam, linen_adam_acc = train_linen(make_adam())
print(
  f"linen learned: final loss {linen_learned[-20:].mean():.4f}, test acc "
  f"{linen_learned_acc:.3f}"
)
print(
  f"linen Adam:    final loss {linen_adam[-20:].mean():.4f}, test acc "
  f"{linen_adam_acc:.3f}"
)
check(linen_learned, linen_learned_acc)
check(linen_adam, linen_adam_acc)


# %%
def smooth(x, width=10):
  return np.convolve(x, np.ones(width) / width, mode="valid")


fig, axes = plt.subplots(1, 2, figsize=(10, 3.5), sharey=True)
for ax, (name, learned, adam) in zip(
  axes,
  [
    ("Flax NNX", nnx_learned, nnx_adam),
    ("Flax linen", linen_learned, linen_adam),
  ],
):
  ax.plot(smooth(learned), label="learned optimizer")
  ax.plot(smooth(adam), label="Adam 1e-2")
  ax.set(title=name, xlabel="training step", yscale="log")
  ax.legend()
axes[0].set_ylabel("training loss (batch, smoothed)")
plt.show()

# %% [markdown]
# The checkpoint above had only six outer steps of meta-training, so the
# learned optimizer is still close to its initialisation (Adam-like, with a
# learned, decaying learning rate). The point here is the plumbing: the same
# `tx` works for NNX, linen, or any other pytree of parameters, also inside
# `optax.chain`.
