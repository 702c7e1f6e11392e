"""Meta-training: `train_and_evaluate(config, workdir)`.

The run state is one pytree, `{step, theta, outer_opt_state,
estimator_state, rng}`; the estimator state holds every particle's inner
model, learned-optimizer accumulators, episode counter and noise. One jitted
dispatch advances it by `outer.steps_per_dispatch` outer steps (a `lax.scan`
over `outer.outer_step`), with the state donated, so the loop below touches
the host only to log, evaluate and checkpoint.

All randomness derives from `config.seed` and the step number: the key of
outer step s is `fold_in(rng, s)`. A run restored from a checkpoint therefore
follows the same trajectory, bit for bit, as one that never stopped.

Sharding (see `lopt.sharding`): the particles are spread over a 1-D
`particles` mesh of every device of every process; the estimator state is
sharded on its particle axis, everything else is replicated, and both jitted
functions (`init_run_state`, `train_steps`) carry these shardings on their
inputs and outputs, so the particle state is born sharded and stays so. The
same code runs on one CPU, on 8 simulated devices and on every host of a TPU
pod slice; a checkpoint written on D devices restores onto D' devices
because the restore targets carry the current shardings.

Preemption: with `jax.distributed`, orbax's preemption sync point makes every
process save the same step and stop. A single process turns SIGTERM into a
flag instead, checked between dispatches: the run then saves the step it has
reached, waits for the save to commit and returns normally (exit code 0).
"""

import dataclasses
import functools
import json
import math
import os
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from lopt import (
  checkpoint,
  estimators,
  inner,
  metrics,
  optimizers,
  outer,
  sharding,
  tasks,
)
from lopt import data as data_lib

#: Version of the checkpoint's JSON item; bump when its layout changes.
FORMAT_VERSION = 1
OUTER_OPTIMIZERS = ("adam", "sgd")
MODELS = ("mlp", "cnn")


def check_config(
  config: ml_collections.ConfigDict, num_devices: int | None = None
) -> None:
  """Fails fast, naming the field, on names and values that cannot work.

  Args:
    config: the experiment config.
    num_devices: the number of devices the particles are sharded over;
      `jax.device_count()` (all processes) by default.

  Raises:
    ValueError: naming the field and why.
  """

  def need(ok, message):
    if not ok:
      raise ValueError(message)

  data_lib.check_dataset_name(config.task.dataset)
  need(
    config.task.model in MODELS,
    f"task.model must be one of {list(MODELS)}, got {config.task.model!r}",
  )
  need(
    config.task.meta_loss in inner.META_LOSSES,
    f"task.meta_loss must be one of {list(inner.META_LOSSES)}, got "
    f"{config.task.meta_loss!r}",
  )
  need(
    config.estimator.name in estimators.REGISTRY,
    f"estimator.name must be one of {sorted(estimators.REGISTRY)}, got "
    f"{config.estimator.name!r}",
  )
  need(
    config.outer.optimizer in OUTER_OPTIMIZERS,
    f"outer.optimizer must be one of {list(OUTER_OPTIMIZERS)}, got "
    f"{config.outer.optimizer!r}",
  )
  for field in (
    "inner.horizon",
    "task.batch_size",
    "outer.num_steps",
    "outer.steps_per_dispatch",
    "checkpoint.every_steps",
    "checkpoint.keep",
    "eval.num_seeds",
    "log.every_steps",
  ):
    section, name = field.split(".")
    value = config[section][name]
    need(
      isinstance(value, int) and value >= 1,
      f"{field} must be an integer >= 1, got {value!r}",
    )
  value = config.eval.every_steps
  need(
    isinstance(value, int) and value >= 0,
    f"eval.every_steps must be an integer >= 0 (0 = no meta-evaluation "
    f"during training), got {value!r}",
  )
  need(
    config.task.image_size >= 0,
    f"task.image_size must be >= 0 (0 = native), got {config.task.image_size}",
  )
  need(
    config.outer.learning_rate > 0,
    f"outer.learning_rate must be > 0, got {config.outer.learning_rate}",
  )
  need(
    config.outer.clip >= 0,
    f"outer.clip must be >= 0 (0 = no clipping), got {config.outer.clip}",
  )
  need(
    config.checkpoint.every_steps % config.outer.steps_per_dispatch == 0,
    f"checkpoint.every_steps ({config.checkpoint.every_steps}) must be a "
    f"multiple of outer.steps_per_dispatch "
    f"({config.outer.steps_per_dispatch}): checkpoints are taken between "
    f"dispatches",
  )
  need(
    config.outer.num_steps % config.outer.steps_per_dispatch == 0,
    f"outer.num_steps ({config.outer.num_steps}) must be a multiple of "
    f"outer.steps_per_dispatch ({config.outer.steps_per_dispatch})",
  )
  # The estimator validates W <= T, sigma > 0, N >= 1, K >= W itself.
  make_estimator(config, _NoSystem(config.inner.horizon))
  optimizers.LOptConfig(kind=config.lopt.kind, hidden=tuple(config.lopt.hidden))
  sharding.check_divisible(
    config.estimator.num_particles,
    jax.device_count() if num_devices is None else num_devices,
  )


@dataclasses.dataclass(frozen=True)
class _NoSystem:
  """A stand-in with only a horizon, to validate estimator arguments."""

  horizon: int


def make_estimator(config, system) -> estimators.Estimator:
  est = config.estimator
  return estimators.make(
    est.name,
    system,
    num_particles=est.num_particles,
    unroll_length=est.unroll_length,
    sigma=est.sigma,
    noise_period=est.noise_period or None,
    step_unlocked=est.step_unlocked,
  )


@dataclasses.dataclass(frozen=True)
class Experiment:
  """Everything static about a run, built once from the config."""

  config: ml_collections.ConfigDict
  task: tasks.Task
  lopt: optimizers.LOptConfig
  outer_tx: optax.GradientTransformation
  #: The particle mesh (`lopt.sharding.make_mesh`); None runs the particles
  #: with a plain vmap, on whatever devices the inputs are on.
  mesh: jax.sharding.Mesh | None = None

  def system(self, data) -> inner.InnerTraining:
    cap = (
      1.5 * math.log(self.task.num_classes)
      if self.config.task.clip_meta_loss
      else None
    )
    return inner.InnerTraining(
      task=self.task,
      lopt=self.lopt,
      horizon=self.config.inner.horizon,
      data=data,
      meta_loss=self.config.task.meta_loss,
      max_loss=cap,
    )

  def estimator(self, data) -> estimators.Estimator:
    def build_estimator(data):
      return make_estimator(self.config, self.system(data))

    if self.mesh is None:
      return build_estimator(data)
    return sharding.shard_particles(build_estimator, data, self.mesh)

  def saved_config(self) -> dict[str, Any]:
    """The JSON stored with every checkpoint; `load_optimizer` reads it."""
    return {
      "format_version": FORMAT_VERSION,
      "config": json.loads(self.config.to_json()),
      "lopt": self.lopt.to_dict(),
      "horizon": self.config.inner.horizon,
    }


def load_data(
  config, mesh: jax.sharding.Mesh | None = None
) -> tuple[dict[str, jax.Array], data_lib.Dataset]:
  """The dataset, whole, replicated on every device of `mesh`.

  Args:
    config: the experiment config.
    mesh: the particle mesh; by default one over all devices.

  Returns:
    `(arrays, dataset)`: the device arrays by name (`train_x`, ...) and the
    host-side `Dataset`.
  """
  dataset = data_lib.load_dataset(
    config.task.dataset,
    data_dir=config.task.data_dir or None,
    image_size=config.task.image_size,
  )
  arrays = {
    "train_x": dataset.train.images,
    "train_y": dataset.train.labels,
    "valid_x": dataset.validation.images,
    "valid_y": dataset.validation.labels,
    "test_x": dataset.test.images,
    "test_y": dataset.test.labels,
  }
  # From numpy, every process its own copy: the multi-process-safe way to
  # build a replicated global array (style.md B.5).
  mesh = sharding.make_mesh() if mesh is None else mesh
  return sharding.put_replicated(arrays, mesh), dataset


def build(
  config, dataset: data_lib.Dataset, mesh: jax.sharding.Mesh | None = None
) -> Experiment:
  """The static parts of a run.

  Args:
    config: the experiment config.
    dataset: the loaded dataset (its shapes and class count size the task).
    mesh: the particle mesh; by default one over all devices. The number of
      particles must be divisible by its size once particles are run
      (`Experiment.estimator`); evaluation alone works on any mesh.

  Returns:
    The `Experiment`.
  """
  task = tasks.make_task(
    config.task.model,
    hidden=tuple(config.task.hidden),
    num_classes=dataset.num_classes,
    input_shape=dataset.image_shape,
    activation=config.task.activation,
    batch_size=config.task.batch_size,
  )
  lopt_cfg = optimizers.LOptConfig(
    kind=config.lopt.kind, hidden=tuple(config.lopt.hidden)
  )
  base = {"adam": optax.adam, "sgd": optax.sgd}[config.outer.optimizer]
  outer_tx = base(config.outer.learning_rate)
  if config.outer.clip:
    outer_tx = optax.chain(
      optax.clip_by_global_norm(config.outer.clip), outer_tx
    )
  mesh = sharding.make_mesh() if mesh is None else mesh
  return Experiment(config, task, lopt_cfg, outer_tx, mesh)


def init_run_state(exp: Experiment, data) -> dict[str, Any]:
  """The run state at step 0; the particles burn in under the initial theta."""
  key = jax.random.key(exp.config.seed)
  k_theta, k_particles, rng = jax.random.split(jax.random.fold_in(key, 0), 3)
  theta = optimizers.init_theta(exp.lopt, k_theta)
  return {
    "step": jnp.zeros((), jnp.int32),
    "theta": theta,
    "outer_opt_state": exp.outer_tx.init(theta),
    "estimator_state": exp.estimator(data).init(theta, k_particles),
    "rng": rng,
  }


def train_steps(exp: Experiment, data, run_state, num_steps: int):
  """Advances the run state `num_steps` outer steps in one `lax.scan`."""
  est = exp.estimator(data)

  def body(run_state, _):
    key = jax.random.fold_in(run_state["rng"], run_state["step"])
    state = outer.OuterState(
      run_state["theta"],
      run_state["outer_opt_state"],
      run_state["estimator_state"],
    )
    state, info = outer.outer_step(est, exp.outer_tx, state, key)
    return dict(
      run_state,
      step=run_state["step"] + 1,
      theta=state.theta,
      outer_opt_state=state.opt_state,
      estimator_state=state.estimator_state,
    ), info

  return jax.lax.scan(body, run_state, None, length=num_steps)


def eval_keys(config) -> jax.Array:
  """Held-out seeds: a key stream that training never draws from."""
  key = jax.random.fold_in(jax.random.key(config.seed), 1)
  return jax.random.split(key, config.eval.num_seeds)


def evaluate_optimizer(exp: Experiment, data, tx, keys):
  """Trains one fresh model per key for T steps; vmapped over keys."""
  run = functools.partial(
    inner.train_model, exp.task, tx, data, num_steps=exp.config.inner.horizon
  )
  return jax.vmap(lambda k: run(key=k))(keys)


def _summarize_eval(result, prefix: str) -> dict[str, float]:
  losses = np.asarray(result["losses"])
  return {
    f"{prefix}/mean_train_loss": float(np.mean(losses)),
    f"{prefix}/final_train_loss": float(np.mean(losses[:, -10:])),
    f"{prefix}/test_accuracy": float(np.mean(result["test_accuracy"])),
  }


def sharded_functions(exp: Experiment, data):
  """The jitted `init_run_state` and `train_steps` with explicit shardings.

  Args:
    exp: the experiment; its mesh gives the shardings.
    data: the dataset arrays (replicated), or their abstract values.

  Returns:
    `(init_fn, steps_fn, abstract_state, state_shardings)`: `init_fn(data)`
    builds the run state; `steps_fn(data, run_state)` advances it
    `outer.steps_per_dispatch` steps and returns `(run_state, infos)`, with
    `run_state` donated; `abstract_state` is the run state's
    `jax.eval_shape`, and `state_shardings` its shardings, leaf for leaf.
  """
  replicated = sharding.replicated(exp.mesh)
  abstract_state = jax.eval_shape(functools.partial(init_run_state, exp), data)
  state_shardings = sharding.run_state_shardings(abstract_state, exp.mesh)
  # Explicit shardings in and out: the particle state is created sharded,
  # inside jit, from the seed (no host-local per-particle arrays exist), and
  # every dispatch hands it back with the same layout, so XLA never
  # reshuffles it between dispatches.
  init_fn = jax.jit(
    functools.partial(init_run_state, exp),
    in_shardings=(replicated,),
    out_shardings=state_shardings,
  )
  # The run state is donated: each dispatch updates it in place.
  steps_fn = jax.jit(
    functools.partial(
      train_steps, exp, num_steps=exp.config.outer.steps_per_dispatch
    ),
    in_shardings=(replicated, state_shardings),
    out_shardings=(state_shardings, replicated),
    donate_argnums=(1,),
  )
  return init_fn, steps_fn, abstract_state, state_shardings


class _SigtermFlag:
  """Turns SIGTERM into a flag that the training loop checks between steps.

  Only for runs without `jax.distributed`: there, JAX's preemption notifier
  owns SIGTERM and orbax's `reached_preemption` brings every process to the
  same stopping step; a Python handler would replace the notifier's. The
  handler only sets the flag (Python runs it between bytecodes of the main
  thread, so it may fire while a dispatch is in flight); the loop saves.
  """

  def __init__(self):
    self.requested = False
    self._previous = None

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __enter__(self) -> "_SigtermFlag":
    if (
      not jax.distributed.is_initialized()
      and threading.current_thread() is threading.main_thread()
    ):
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc_info) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str
) -> dict[str, Any]:
  """Meta-trains a learned optimizer; resumes from workdir's checkpoints.

  Every process of a multi-host run calls this with the same arguments.
  Only process 0 writes metrics; all of them take part in checkpointing.
  On SIGTERM (or a preemption notice, with `jax.distributed`) the run saves
  a checkpoint at the next step boundary and returns.

  Args:
    config: the experiment config (see configs/default.py).
    workdir: where checkpoints, metrics.jsonl and TensorBoard events go.
      Running again on the same workdir resumes from the newest complete
      checkpoint, on any number of devices that divides the particle count.

  Returns:
    The final run state (its arrays may span several processes; read them
    with `lopt.sharding.to_host`).
  """
  # Installed first, so that a SIGTERM during start-up (data, compilation)
  # also ends in a checkpoint at the first step boundary.
  with _SigtermFlag() as sigterm:
    return _train_and_evaluate(config, workdir, sigterm)


def _train_and_evaluate(config, workdir, sigterm: _SigtermFlag):
  """`train_and_evaluate`, with SIGTERM already turned into `sigterm`."""
  mesh = sharding.make_mesh()
  check_config(config, mesh.size)
  data, dataset = load_data(config, mesh)
  exp = build(config, dataset, mesh)
  logging.info(
    "Inner task: %s with %d parameters on %s %s; learned optimizer %s",
    config.task.model,
    exp.task.num_params,
    dataset.name,
    dataset.image_shape,
    exp.lopt,
  )
  logging.info(
    "%d particles over a mesh of %d devices (%d processes): %d per device",
    config.estimator.num_particles,
    mesh.size,
    jax.process_count(),
    config.estimator.num_particles // mesh.size,
  )

  replicated = sharding.replicated(mesh)
  init_fn, step_fn, abstract_state, state_shardings = sharded_functions(
    exp, data
  )
  steps_per_dispatch = config.outer.steps_per_dispatch
  horizon = config.inner.horizon

  # The evaluation runs replicated (theta and the data are); its keys are
  # made inside jit, since a host-made key array would live on one local
  # device, which a multi-process computation cannot take as input.
  @functools.partial(jax.jit, out_shardings=replicated)
  def eval_learned(data, theta):
    tx = optimizers.learned_optimizer(theta, exp.lopt, horizon)
    return evaluate_optimizer(exp, data, tx, eval_keys(config))

  adam = optimizers.adam_baseline(config.eval.adam_learning_rate)

  @functools.partial(jax.jit, out_shardings=replicated)
  def eval_adam(data):
    return evaluate_optimizer(exp, data, adam, eval_keys(config))

  if "://" not in workdir:
    os.makedirs(workdir, exist_ok=True)
  ckpt = checkpoint.Checkpointer(
    os.path.join(workdir, "checkpoints"),
    every_steps=config.checkpoint.every_steps,
    keep=config.checkpoint.keep,
  )
  writer = metrics.MetricWriter(workdir)  # a no-op on processes other than 0
  latest = ckpt.latest_step()
  if latest is None:
    run_state = init_fn(data)
    logging.info("Starting from scratch (burn-in included).")
  else:
    # The targets carry this run's shardings, whatever the device count of
    # the run that wrote the checkpoint: that is the elastic resume.
    abstract = checkpoint.abstract_like(abstract_state, state_shardings)
    run_state = ckpt.restore(latest, abstract)
    logging.info("Resumed from the checkpoint at step %d.", latest)

  adam_scores = {}

  def adam_baseline():
    # Computed on first use: a resumed run that reaches no evaluation step
    # never compiles it.
    if not adam_scores:
      adam_scores.update(
        _summarize_eval(sharding.to_host(eval_adam(data)), "eval/adam")
      )
    return adam_scores

  def meta_eval(step, theta):
    scores = _summarize_eval(
      sharding.to_host(eval_learned(data, theta)), "eval/learned"
    )
    writer.write(step, scores)
    logging.info(
      "step %d: learned optimizer mean train loss %.4f (Adam %.4f)",
      step,
      scores["eval/learned/mean_train_loss"],
      adam_baseline()["eval/adam/mean_train_loss"],
    )

  # eval.every_steps = 0 turns meta-evaluation off (e.g. on a pod slice,
  # where it would run replicated on every device; lopt.evaluate can score
  # the checkpoints afterwards).
  eval_every = config.eval.every_steps
  step = int(sharding.to_host(run_state["step"]))
  if step == 0 and eval_every:
    writer.write(0, adam_baseline())
    meta_eval(0, run_state["theta"])

  num_steps = config.outer.num_steps
  inner_per_outer = make_estimator(config, _NoSystem(config.inner.horizon))
  inner_steps = (
    inner_per_outer.members
    * inner_per_outer.num_particles
    * inner_per_outer.unroll_length
  )
  saved_config = exp.saved_config()
  # Throughput is measured between log points, so compilation (in the first
  # window) shows up once instead of skewing every later figure.
  last_time, last_step = time.perf_counter(), step
  pending = []  # infos since the last log, still on the device
  while step < num_steps:
    run_state, info = step_fn(data, run_state)
    pending.append(info)
    previous, step = step, step + steps_per_dispatch
    # Read the flag once: the handler may fire at any moment, and this
    # step's save and exit must agree.
    stop = sigterm.requested
    ckpt.save(step, run_state, saved_config, force=stop or step >= num_steps)
    if (
      step // config.log.every_steps > previous // config.log.every_steps
      or step >= num_steps
      or stop
    ):
      # Stacking waits for the dispatches; the only host sync of the loop.
      info = jax.tree.map(
        lambda *x: np.concatenate(x), *sharding.to_host(pending)
      )
      pending = []
      now = time.perf_counter()
      rate = (step - last_step) / (now - last_time)
      last_time, last_step = now, step
      writer.write(
        step,
        {
          "meta_loss": float(np.mean(info["loss"])),
          "grad_norm": float(np.mean(info["grad_norm"])),
          # Signal-to-noise of the ES estimate: far below 1 means sigma or
          # the particle count is off and updates are mostly noise.
          "grad_snr": float(np.median(info["grad_snr"])),
          "grad_var": float(np.mean(info["grad_var"])),
          "nonfinite_steps": float(np.sum(info["nonfinite"])),
          "skipped_updates": float(np.sum(~info["applied"])),
          "inner_steps_per_sec": rate * inner_steps,
          "outer_steps_per_sec": rate,
        },
      )
      logging.info(
        "step %d/%d: meta-loss %.4f, %.0f inner steps/s, ETA %.0f s",
        step,
        num_steps,
        np.mean(info["loss"]),
        rate * inner_steps,
        (num_steps - step) / rate,
      )
    if stop:
      logging.warning(
        "SIGTERM: saved the checkpoint of step %d; exiting.", step
      )
      break
    # Every process calls this at every step: it is a sync point.
    if ckpt.reached_preemption(step):
      logging.warning("Preemption at step %d: checkpoint saved, exiting.", step)
      break
    if eval_every and step // eval_every > previous // eval_every:
      meta_eval(step, run_state["theta"])
  ckpt.wait_until_finished()
  ckpt.close()
  writer.close()
  return run_state
