"""Tests for lopt.load_optimizer: a meta-trained optimizer as optax.

One tiny meta-training run (configs/tiny.py, about 15 s) is shared by the
module. The loaded optimizer must be exactly what was meta-trained, must
train models it never saw (Flax linen of another shape, Flax NNX, plain
dicts, inside `optax.chain`), and must fail with clear messages, the same
from `lopt.load_optimizer` and `lopt.evaluate`, on a path without a
checkpoint, a foreign checkpoint, a corrupted one, or one whose
architecture does not fit theta.
"""

import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

import lopt
from configs import tiny
from lopt import checkpoint, evaluate, experiment, export, train, validation
from lopt.learned import optimizers
from lopt.learned.config import ADAM_KINDS
from lopt.tasks import data as data_lib
from lopt.tasks import models, networks

# Batches come from numpy: eager jax.random calls of new shapes compile.
_BATCH = 32


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A finished tiny meta-training run: (config, workdir, final run state)."""
  config = tiny.get_config()
  config.task.data_dir = str(tmp_path_factory.mktemp("tfds"))
  workdir = str(tmp_path_factory.mktemp("workdir"))
  run_state = train.train_and_evaluate(config, workdir)
  return config, workdir, run_state


@pytest.fixture(scope="module")
def digits(run):
  config, _, _ = run
  return data_lib.load_dataset("digits", data_dir=config.task.data_dir)


def _batches(digits, num_steps, seed=0):
  """A fixed sequence of (num_steps, _BATCH, ...) training batches."""
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, len(digits.train.labels), (num_steps, _BATCH))
  return (
    jnp.asarray(digits.train.images[idx]),
    jnp.asarray(digits.train.labels[idx]),
  )


def _fit(tx, loss_fn, params, batches):
  """Trains params on the batches under jit.

  Args:
    tx: the optimizer.
    loss_fn: `loss_fn(params, x, y)`.
    params: the initial parameters.
    batches: `(xs, ys)`, one row per step.

  Returns:
    `(params, losses, update_norms)`: the final parameters, the loss before
    each step and the global norm of each step's update.
  """

  @jax.jit
  def fit(params, xs, ys):
    def step(carry, batch):
      params, opt_state = carry
      loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
      updates, opt_state = tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
      return (params, opt_state), (loss, optax.tree.norm(updates))

    (params, _), (losses, norms) = jax.lax.scan(
      step, (params, tx.init(params)), (xs, ys)
    )
    return params, losses, norms

  return fit(params, *batches)


def _xent(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _assert_loss_goes_down(losses, factor=0.3):
  losses = np.asarray(losses)
  assert np.all(np.isfinite(losses))
  first, last = losses[:10].mean(), losses[-10:].mean()
  assert last < factor * first, (first, last)


def test_loaded_optimizer_is_bit_for_bit_the_meta_trained_one(run, digits):
  config, workdir, run_state = run
  horizon = config.inner.horizon
  tx = lopt.load_optimizer(workdir)
  assert isinstance(tx, optax.GradientTransformation)
  in_memory = optimizers.learned_optimizer(
    run_state["theta"], validation.lopt_config(config), horizon
  )
  task = models.make_task(
    "mlp",
    hidden=tuple(config.task.hidden),
    num_classes=10,
    input_shape=(8, 8, 1),
  )
  params = task.init(jax.random.key(3))
  batches = _batches(digits, horizon)

  loaded_params, loaded_losses, _ = _fit(tx, task.loss, params, batches)
  want_params, want_losses, _ = _fit(in_memory, task.loss, params, batches)

  jax.tree.map(np.testing.assert_array_equal, loaded_params, want_params)
  np.testing.assert_array_equal(loaded_losses, want_losses)
  # Not vacuous: the optimizer did move the parameters.
  moved = jax.tree.map(
    lambda a, b: np.any(np.asarray(a) != np.asarray(b)), loaded_params, params
  )
  assert all(jax.tree.leaves(moved))


def test_loaded_optimizer_reproduces_the_logged_meta_evaluation(run):
  """The final eval of metrics.jsonl, redone with the exported optimizer."""
  config, workdir, _ = run
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  logged = [
    r
    for r in rows
    if r["step"] == config.outer.num_steps
    and "eval/learned/mean_train_loss" in r
  ]
  assert logged, "the run logged no final evaluation"
  data, dataset = experiment.load_data(config)
  exp = experiment.build(config, dataset)
  tx = lopt.load_optimizer(workdir)
  keys = experiment.eval_keys(config)
  result = jax.jit(lambda d: experiment.evaluate_optimizer(exp, d, tx, keys))(
    data
  )
  np.testing.assert_allclose(
    np.mean(np.asarray(result["losses"])),
    logged[-1]["eval/learned/mean_train_loss"],
    rtol=1e-6,
  )
  np.testing.assert_allclose(
    np.mean(np.asarray(result["test_accuracy"])),
    logged[-1]["eval/learned/test_accuracy"],
    rtol=1e-6,
  )


def test_trains_a_linen_mlp_it_was_not_meta_trained_on(run, digits):
  _, workdir, _ = run
  num_steps = 100
  tx = lopt.load_optimizer(workdir, num_steps=num_steps)
  model = networks.MLP(hidden=(16, 16), num_outputs=10)
  params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]

  def loss_fn(params, x, y):
    return _xent(model.apply({"params": params}, x), y)

  _, losses, _ = _fit(tx, loss_fn, params, _batches(digits, num_steps))
  _assert_loss_goes_down(losses)


def test_num_steps_sets_the_length_of_the_schedule(run, digits):
  config, workdir, _ = run
  if config.lopt.kind not in ADAM_KINDS:
    pytest.skip("only the Adam kinds have a learning-rate schedule")
  horizon = config.inner.horizon
  params = {"w": jnp.zeros((64, 10)), "b": jnp.zeros((10,))}

  def loss_fn(params, x, y):
    return _xent(x.reshape((x.shape[0], -1)) @ params["w"] + params["b"], y)

  batches = _batches(digits, 2 * horizon)
  *_, by_default = _fit(lopt.load_optimizer(workdir), loss_fn, params, batches)
  *_, longer = _fit(
    lopt.load_optimizer(workdir, num_steps=2 * horizon),
    loss_fn,
    params,
    batches,
  )
  # By default the learning rate reaches zero at the meta-training horizon;
  # with num_steps = 2 T it does so only at 2 T.
  assert np.all(np.asarray(by_default[:horizon]) > 0)
  np.testing.assert_array_equal(by_default[horizon:], 0.0)
  assert np.all(np.asarray(longer) > 0)


def test_trains_a_flax_nnx_model(run, digits):
  _, workdir, _ = run
  num_steps = 100

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.hidden = nnx.Linear(64, 24, rngs=rngs)
      self.out = nnx.Linear(24, 10, rngs=rngs)

    def __call__(self, x):
      x = x.reshape((x.shape[0], -1))
      return self.out(nnx.relu(self.hidden(x)))

  model = Net(nnx.Rngs(0))
  tx = lopt.load_optimizer(workdir, num_steps=num_steps)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(lambda m: _xent(m(x), y))(model)
    optimizer.update(model, grads)
    return loss

  xs, ys = _batches(digits, num_steps)
  losses = [float(train_step(model, optimizer, x, y)) for x, y in zip(xs, ys)]
  _assert_loss_goes_down(losses)


def test_plain_dict_params_inside_an_optax_chain(run, digits):
  _, workdir, _ = run
  num_steps = 100
  tx = optax.chain(
    optax.clip_by_global_norm(1.0),
    lopt.load_optimizer(workdir, num_steps=num_steps),
  )
  params = {
    "linear": {"w": jnp.zeros((64, 10)), "b": jnp.zeros((10,))},
    "log_temperature": jnp.zeros(()),
  }

  def loss_fn(params, x, y):
    logits = (
      x.reshape((x.shape[0], -1)) @ params["linear"]["w"]
      + params["linear"]["b"]
    )
    return _xent(logits * jnp.exp(params["log_temperature"]), y)

  new_params, losses, _ = _fit(tx, loss_fn, params, _batches(digits, num_steps))
  _assert_loss_goes_down(losses)
  assert jax.tree.structure(new_params) == jax.tree.structure(params)


def test_accepts_the_workdir_and_its_checkpoints_directory(run):
  _, workdir, run_state = run
  params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)}
  grads = {"w": jnp.linspace(2.0, -1.0, 12).reshape(3, 4)}
  updates = []
  for path in (workdir, os.path.join(workdir, "checkpoints")):
    tx = lopt.load_optimizer(path)
    step, _ = tx.update(grads, tx.init(params), params)
    updates.append(np.asarray(step["w"]))
  np.testing.assert_array_equal(updates[0], updates[1])
  assert np.any(updates[0] != 0)
  theta, _, _ = export.load_theta(os.path.join(workdir, "checkpoints"))
  jax.tree.map(np.testing.assert_array_equal, theta, run_state["theta"])


def test_step_selects_an_older_checkpoint(run):
  _, workdir, run_state = run
  older, _, _ = export.load_theta(workdir, step=2)
  differs = jax.tree.map(
    lambda a, b: np.any(np.asarray(a) != np.asarray(b)),
    older,
    run_state["theta"],
  )
  assert any(jax.tree.leaves(differs))
  with pytest.raises(FileNotFoundError, match="step 1 "):
    lopt.load_optimizer(workdir, step=1)


# -- Clear errors, the same from lopt.load_optimizer and lopt.evaluate ------


def _load(path):
  return lopt.load_optimizer(str(path))


def _evaluate(path):
  # Fails before anything is trained or written.
  return evaluate.evaluate(str(path), num_seeds=1, num_steps=2, output="")


LOADERS = pytest.mark.parametrize(
  "load", [_load, _evaluate], ids=["load_optimizer", "evaluate"]
)


def _copy_checkpoints(run, tmp_path):
  """A copy of the run's checkpoints: (workdir, newest step directory)."""
  _, workdir, _ = run
  copy = tmp_path / "copy"
  shutil.copytree(os.path.join(workdir, "checkpoints"), copy / "checkpoints")
  newest = max(
    (p for p in (copy / "checkpoints").iterdir() if p.name.isdigit()),
    key=lambda p: int(p.name),
  )
  return copy, newest


@LOADERS
@pytest.mark.parametrize("make", ["missing", "empty", "empty_checkpoints"])
def test_a_path_without_a_checkpoint_is_named_in_the_error(
  tmp_path, make, load
):
  path = tmp_path / "workdir"
  if make != "missing":
    path.mkdir()
  if make == "empty_checkpoints":
    (path / "checkpoints").mkdir()
  with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
    load(path)


def test_a_step_directory_is_refused_with_a_hint(run):
  config, workdir, _ = run
  step_dir = os.path.join(workdir, "checkpoints", str(config.outer.num_steps))
  assert os.path.isdir(step_dir)
  with pytest.raises(FileNotFoundError, match="pass its parent"):
    lopt.load_optimizer(step_dir)


def _foreign_orbax_steps(path):
  """What another orbax user writes: step directories of other items."""
  with ocp.CheckpointManager(path / "checkpoints") as manager:
    manager.save(3, args=ocp.args.StandardSave({"w": np.ones(3, np.float32)}))
  return path, "is a checkpoint, but not one of lopt", ValueError


def _foreign_orbax_checkpoint(path):
  """One orbax checkpoint, no step directories (StandardCheckpointer)."""
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path / "ckpt", {"w": np.ones(3, np.float32)})
  return (
    path / "ckpt",
    "an orbax checkpoint, but not one of lopt",
    (FileNotFoundError),
  )


def _foreign_lopt_layout(path):
  """lopt's layout, but no learned optimizer in it (another trainer)."""
  state = {
    "step": jnp.int32(1),
    "weights": jnp.ones(3),
    "estimator_state": {"counter": jnp.zeros(2, jnp.int32)},
  }
  with checkpoint.Checkpointer(
    path / "checkpoints", every_steps=1, keep=1
  ) as ckpt:
    ckpt.save(1, state, {"seed": 0})
  return path, "not of a lopt learned optimizer", ValueError


@LOADERS
@pytest.mark.parametrize(
  "make",
  [_foreign_orbax_steps, _foreign_orbax_checkpoint, _foreign_lopt_layout],
  ids=["orbax_steps", "orbax_checkpoint", "lopt_layout"],
)
def test_a_foreign_checkpoint_is_named_and_refused(tmp_path, make, load):
  path, message, error = make(tmp_path / "foreign")
  with pytest.raises(error, match=message) as info:
    load(path)
  assert str(path) in str(info.value)


def _truncate_newest_theta(newest):
  # theta's arrays are small: TensorStore keeps them in its (checksummed)
  # index nodes, the largest file of the item.
  path = max(
    (p for p in (newest / "meta").rglob("*") if p.is_file()),
    key=lambda p: p.stat().st_size,
  )
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  return "cannot be read"


def _edit_newest_config(newest):
  # Valid JSON, the same architecture: only the digest can tell.
  path = newest / "config" / "metadata"
  saved = json.loads(path.read_text())
  saved["horizon"] += 1
  path.write_text(json.dumps(saved))
  return "config JSON differs"


@LOADERS
@pytest.mark.parametrize(
  "damage", [_truncate_newest_theta, _edit_newest_config]
)
def test_a_corrupted_checkpoint_is_named_with_the_intact_ones(
  run, tmp_path, load, damage
):
  copy, newest = _copy_checkpoints(run, tmp_path)
  older = sorted(
    int(p.name) for p in newest.parent.iterdir() if p.name != newest.name
  )
  message = damage(newest)
  with pytest.raises(checkpoint.CorruptCheckpointError, match=message) as info:
    load(copy)
  assert f"Checkpoint {newest} is corrupted" in str(info.value)
  assert f"other complete steps of {newest.parent}: {older}" in str(info.value)
  # The intact ones still load.
  lopt.load_optimizer(str(copy), step=older[-1])


@LOADERS
def test_architecture_that_does_not_fit_theta_is_a_clear_error(
  run, tmp_path, load
):
  """A checkpoint written as saved (its digests agree), whose recorded
  architecture is not the one of its theta."""
  copy, newest = _copy_checkpoints(run, tmp_path)
  meta, saved = checkpoint.load_meta(newest.parent)
  saved["lopt"]["hidden"] = [7]
  saved["config"]["lopt"]["hidden"] = [7]
  with checkpoint.Checkpointer(newest.parent, every_steps=1, keep=10) as ckpt:
    assert ckpt.save(
      int(newest.name) + 1,
      {**meta, "estimator_state": {"counter": jnp.zeros(2, jnp.int32)}},
      saved,
    )

  with pytest.raises(ValueError, match=r"hidden=\(7,\)") as info:
    load(copy)
  assert "does not fit its recorded architecture" in str(info.value)
  assert "shape" in str(info.value)
  # The older, consistent checkpoints still load.
  lopt.load_optimizer(str(copy), step=int(newest.name))
