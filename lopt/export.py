"""Load a meta-trained learned optimizer as an `optax.GradientTransformation`.

    tx = lopt.load_optimizer("/tmp/lopt", num_steps=1000)
    opt_state = tx.init(params)
    updates, opt_state = tx.update(grads, opt_state, params)

The checkpoint's JSON item holds the learned optimizer's architecture, so
loading needs neither the config file nor the training stack; only theta is
read, not the particles' states. The transformation is the very function
that meta-training ran, so the loaded optimizer behaves bit for bit as it
did there.
"""

import os

import jax
import optax

from lopt import checkpoint
from lopt.learned import optimizers
from lopt.learned.config import LOptConfig


def _checkpoint_dir(path: str) -> str:
  nested = os.path.join(path, "checkpoints")
  return nested if os.path.isdir(nested) else path


def load_theta(path: str, step: int | None = None):
  """Returns (theta, LOptConfig, saved JSON) from a workdir or checkpoint dir.

  The saved JSON holds `config` (the run's resolved config), `lopt` (the
  architecture) and `horizon` (the inner horizon it was meta-trained on).

  Raises:
    FileNotFoundError: if `path` holds no complete checkpoint.
    ValueError: if the checkpoint is not a lopt learned optimizer, or its
      theta does not match its recorded architecture.
  """
  meta, saved = checkpoint.load_meta(_checkpoint_dir(path), step)
  if "lopt" not in saved or "theta" not in meta:
    raise ValueError(
      f"{path} holds a checkpoint, but not of a lopt learned optimizer: "
      f"its config has keys {sorted(saved)} and its state {sorted(meta)}."
    )
  cfg = LOptConfig.from_dict(saved["lopt"])
  theta = jax.tree.map(jax.numpy.asarray, meta["theta"])
  try:  # learned_optimizer checks that theta's shapes fit the architecture
    optimizers.learned_optimizer(theta, cfg, saved.get("horizon", 1))
  except ValueError as e:
    raise ValueError(
      f"The checkpoint in {path} does not fit its recorded "
      f"architecture {cfg}: {e}"
    ) from e
  return theta, cfg, saved


def load_optimizer(
  path: str, num_steps: int | None = None, step: int | None = None
) -> optax.GradientTransformation:
  """Loads a trained learned optimizer as an optax transformation.

  Args:
    path: a meta-training workdir or its `checkpoints` directory.
    num_steps: the length of the training run it will drive. Defaults to the
      inner horizon it was meta-trained on; its learning-rate schedule and
      progress features are relative to this.
    step: which checkpoint; the newest complete one by default.

  Returns:
    An `optax.GradientTransformation` whose `update(grads, state, params)`
    needs `params`. It works on any parameter pytree (Flax linen, Flax NNX
    via `nnx.Optimizer(model, tx, wrt=nnx.Param)`, plain dicts).
  """
  theta, cfg, saved = load_theta(path, step)
  return optimizers.learned_optimizer(
    theta, cfg, num_steps or saved.get("horizon")
  )
