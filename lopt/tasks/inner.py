"""Inner training as an `UnrolledSystem`: a task trained by a learned optimizer.

One step of the system is one training step of the inner model: sample a
minibatch inside jit, take the gradient of its loss, and apply the learned
optimizer's update, the same `optax.GradientTransformation` that users get
from `lopt.load_optimizer`. The step's loss L_t is the meta-loss:

* `train`: the training-batch loss at the parameters before the update (the
  objective of learned_optimization and of lopt's benchmarks), or
* `validation`: the loss of the updated parameters on a validation batch
  (the NRES paper's learned-optimizer setting).

With `max_loss` set, L_t is capped there (learned_optimization caps the
cross-entropy at 1.5 ln C): a diverging inner run then scores badly but
boundedly, instead of letting one particle's 1e10 loss dominate the
estimate. A non-finite loss stays non-finite, for the estimator to mask.
Then `(L_t - loss_shift) / loss_scale` is what the estimator sees: the
normalisation that makes the tasks of a family comparable
(`lopt.tasks.family`).

With `batch_fractions` other than (1.0,), each episode is augmented: its
`init` draws one fraction f uniformly from them, and every step of that
episode takes its gradient and L_t on the first max(1, round(f B)) of the
B sampled examples (a uniform subsample, since they are drawn i.i.d.). The
shapes stay those of batch B; only the gradient noise grows, by up to
1/sqrt(f), so that a learned optimizer meta-trained on batches of 32-256
also meets the noise of smaller ones (`family.batch_fractions`).

The dataset enters as arrays held by the system. Build the system inside the
jitted function from a data argument: arrays closed over by `jit` are baked
into the compiled program as constants.
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from lopt.learned import features, optimizers
from lopt.learned.config import LOptConfig
from lopt.tasks import models

META_LOSSES = ("train", "validation")


@dataclasses.dataclass(frozen=True)
class InnerTraining:
  """A task trained for `horizon` steps by the learned optimizer theta.

  Attributes:
    task: the inner model and its loss.
    lopt: the learned optimizer's architecture (theta must fit it).
    horizon: T, inner training steps per episode.
    data: arrays `train_x`, `train_y`, `valid_x`, `valid_y` (device arrays,
      or tracers when the system is built inside jit).
    meta_loss: 'train' or 'validation', see the module docstring.
    max_loss: the cap on L_t, or None.
    loss_shift: subtracted from the capped L_t.
    loss_scale: divides the shifted L_t (> 0).
    batch_fractions: the effective batch fractions an episode draws from,
      each in (0, 1]; (1.0,) (the default) does not augment.
  """

  task: models.Task
  lopt: LOptConfig
  horizon: int
  data: Mapping[str, jax.Array]
  meta_loss: str = "train"
  max_loss: float | None = None
  loss_shift: float = 0.0
  loss_scale: float = 1.0
  batch_fractions: tuple[float, ...] = (1.0,)

  def __post_init__(self):
    if self.meta_loss not in META_LOSSES:
      raise ValueError(
        f"task.meta_loss must be one of {list(META_LOSSES)}, "
        f"got {self.meta_loss!r}"
      )
    if not self.loss_scale > 0:
      raise ValueError(f"loss_scale must be > 0, got {self.loss_scale!r}")
    fractions = tuple(self.batch_fractions)
    if not fractions or not all(0 < f <= 1 for f in fractions):
      raise ValueError(
        f"batch_fractions must be fractions in (0, 1], got {fractions!r}"
      )
    object.__setattr__(self, "batch_fractions", fractions)

  @property
  def augmented(self) -> bool:
    """Whether episodes draw an effective batch size (`batch_fractions`)."""
    return self.batch_fractions != (1.0,)

  def batch_counts(self) -> tuple[int, ...]:
    """The effective batch sizes an episode draws from."""
    b = self.task.batch_size
    return tuple(max(1, round(f * b)) for f in self.batch_fractions)

  def init(self, key: jax.Array) -> dict[str, Any]:
    params = self.task.init(key)
    state = {
      "params": params,
      "opt_state": features.init_state(self.lopt, params),
    }
    if self.augmented:
      # A stream apart from the init's, so the model's init is unchanged.
      counts = jnp.asarray(self.batch_counts(), jnp.int32)
      state["batch_count"] = jax.random.choice(
        jax.random.fold_in(key, 1), counts
      )
    return state

  def step(self, theta, state, t, key):
    del t  # the learned optimizer keeps its own step count
    k_train, k_valid = jax.random.split(key)
    x, y = self.task.sample_batch(
      k_train, self.data["train_x"], self.data["train_y"]
    )
    # Only an augmented episode passes example weights, so that any task
    # with a `loss(params, x, y)` works unaugmented.
    weights = ()
    if self.augmented:
      keep = jnp.arange(self.task.batch_size) < state["batch_count"]
      weights = (keep.astype(jnp.float32),)
    loss, grads = jax.value_and_grad(self.task.loss)(
      state["params"], x, y, *weights
    )
    tx = optimizers.learned_optimizer(theta, self.lopt, self.horizon)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new_state = {"params": params, "opt_state": opt_state}
    if self.augmented:
      new_state["batch_count"] = state["batch_count"]
    if self.meta_loss == "validation":
      xv, yv = self.task.sample_batch(
        k_valid, self.data["valid_x"], self.data["valid_y"]
      )
      loss = self.task.loss(params, xv, yv)
    if self.max_loss is not None:
      loss = jnp.minimum(loss, self.max_loss)
    if self.loss_shift or self.loss_scale != 1.0:
      loss = (loss - self.loss_shift) / self.loss_scale
    return new_state, loss


def train_model(
  task: models.Task,
  tx: optax.GradientTransformation,
  data: Mapping[str, jax.Array],
  key: jax.Array,
  num_steps: int,
  trace: Callable[[optax.OptState], Any] | None = None,
  eval_params: Callable[[optax.OptState, Any], Any] | None = None,
):
  """Trains one fresh model with any optax optimizer; pure and jit-able.

  The yardstick of meta-evaluation: the learned optimizer and the Adam
  baselines are scored by the same function, on the same batches.

  Args:
    task: the inner model.
    tx: the optimizer (a learned one from
      `lopt.learned.optimizers.learned_optimizer` or
      `lopt.load_optimizer`, or any optax transformation).
    data: arrays `train_x`, `train_y`, `test_x`, `test_y`.
    key: the seed of the model's init and its batches.
    num_steps: training steps.
    trace: optional; maps the optimizer state after each step to a pytree
      of arrays (e.g. the adaptive kind's per-tensor rates), returned
      stacked over the steps as `trace`.
    eval_params: optional; maps the final optimizer state and parameters to
      the parameters that `test_loss` and `test_accuracy` are taken at
      (e.g. `optax.contrib.schedule_free_eval_params`, the averaged iterate
      of a schedule-free method). Default: the final parameters. The
      training losses are always those at the parameters the gradient is
      taken at.

  Returns:
    A dict: `losses` (the training-batch loss before each step, shape
    [num_steps]), `test_loss` and `test_accuracy` of the final parameters
    (or of `eval_params`' choice), and `trace` when asked for.
  """
  k_init, k_steps = jax.random.split(key)
  params = task.init(k_init)

  def step(carry, step_key):
    params, opt_state = carry
    x, y = task.sample_batch(step_key, data["train_x"], data["train_y"])
    loss, grads = jax.value_and_grad(task.loss)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    traced = () if trace is None else trace(opt_state)
    return (optax.apply_updates(params, updates), opt_state), (loss, traced)

  (params, opt_state), (losses, traced) = jax.lax.scan(
    step, (params, tx.init(params)), jax.random.split(k_steps, num_steps)
  )
  if eval_params is not None:
    params = eval_params(opt_state, params)
  out = {
    "losses": losses,
    "test_loss": task.loss(params, data["test_x"], data["test_y"]),
    "test_accuracy": task.accuracy(params, data["test_x"], data["test_y"]),
  }
  if trace is not None:
    out["trace"] = traced
  return out
