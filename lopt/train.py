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
"""

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lopt import checkpoint, data as data_lib, estimators, inner, metrics
from lopt import optimizers, outer, tasks

#: Version of the checkpoint's JSON item; bump when its layout changes.
FORMAT_VERSION = 1
OUTER_OPTIMIZERS = ("adam", "sgd")
MODELS = ("mlp", "cnn")


def check_config(config: ml_collections.ConfigDict) -> None:
  """Fails fast, naming the field, on names and values that cannot work."""
  def need(ok, message):
    if not ok:
      raise ValueError(message)

  data_lib.check_dataset_name(config.task.dataset)
  need(config.task.model in MODELS,
       f"task.model must be one of {list(MODELS)}, got {config.task.model!r}")
  need(config.task.meta_loss in inner.META_LOSSES,
       f"task.meta_loss must be one of {list(inner.META_LOSSES)}, got "
       f"{config.task.meta_loss!r}")
  need(config.estimator.name in estimators.REGISTRY,
       f"estimator.name must be one of {sorted(estimators.REGISTRY)}, got "
       f"{config.estimator.name!r}")
  need(config.outer.optimizer in OUTER_OPTIMIZERS,
       f"outer.optimizer must be one of {list(OUTER_OPTIMIZERS)}, got "
       f"{config.outer.optimizer!r}")
  for field in ("inner.horizon", "task.batch_size", "outer.num_steps",
                "outer.steps_per_dispatch", "checkpoint.every_steps",
                "checkpoint.keep", "eval.every_steps", "eval.num_seeds",
                "log.every_steps"):
    section, name = field.split(".")
    value = config[section][name]
    need(isinstance(value, int) and value >= 1,
         f"{field} must be an integer >= 1, got {value!r}")
  need(config.task.image_size >= 0,
       f"task.image_size must be >= 0 (0 = native), got "
       f"{config.task.image_size}")
  need(config.outer.learning_rate > 0,
       f"outer.learning_rate must be > 0, got {config.outer.learning_rate}")
  need(config.outer.clip >= 0,
       f"outer.clip must be >= 0 (0 = no clipping), got {config.outer.clip}")
  need(config.checkpoint.every_steps % config.outer.steps_per_dispatch == 0,
       f"checkpoint.every_steps ({config.checkpoint.every_steps}) must be a "
       f"multiple of outer.steps_per_dispatch "
       f"({config.outer.steps_per_dispatch}): checkpoints are taken between "
       f"dispatches")
  need(config.outer.num_steps % config.outer.steps_per_dispatch == 0,
       f"outer.num_steps ({config.outer.num_steps}) must be a multiple of "
       f"outer.steps_per_dispatch ({config.outer.steps_per_dispatch})")
  # The estimator validates W <= T, sigma > 0, N >= 1, K >= W itself.
  make_estimator(config, _NoSystem(config.inner.horizon))
  optimizers.LOptConfig(kind=config.lopt.kind, hidden=tuple(config.lopt.hidden))


@dataclasses.dataclass(frozen=True)
class _NoSystem:
  """A stand-in with only a horizon, to validate estimator arguments."""

  horizon: int


def make_estimator(config, system) -> estimators.Estimator:
  est = config.estimator
  return estimators.make(
      est.name, system, num_particles=est.num_particles,
      unroll_length=est.unroll_length, sigma=est.sigma,
      noise_period=est.noise_period or None,
      step_unlocked=est.step_unlocked)


@dataclasses.dataclass(frozen=True)
class Experiment:
  """Everything static about a run, built once from the config."""

  config: ml_collections.ConfigDict
  task: tasks.Task
  lopt: optimizers.LOptConfig
  outer_tx: optax.GradientTransformation

  def system(self, data) -> inner.InnerTraining:
    cap = (1.5 * math.log(self.task.num_classes)
           if self.config.task.clip_meta_loss else None)
    return inner.InnerTraining(
        task=self.task, lopt=self.lopt, horizon=self.config.inner.horizon,
        data=data, meta_loss=self.config.task.meta_loss, max_loss=cap)

  def estimator(self, data) -> estimators.Estimator:
    return make_estimator(self.config, self.system(data))

  def saved_config(self) -> dict[str, Any]:
    """The JSON stored with every checkpoint; `load_optimizer` reads it."""
    return {"format_version": FORMAT_VERSION,
            "config": json.loads(self.config.to_json()),
            "lopt": self.lopt.to_dict(),
            "horizon": self.config.inner.horizon}


def load_data(config) -> tuple[dict[str, jax.Array], data_lib.Dataset]:
  """The dataset, whole, on the device (replicated when sharded)."""
  dataset = data_lib.load_dataset(
      config.task.dataset, data_dir=config.task.data_dir or None,
      image_size=config.task.image_size)
  arrays = {
      "train_x": dataset.train.images, "train_y": dataset.train.labels,
      "valid_x": dataset.validation.images,
      "valid_y": dataset.validation.labels,
      "test_x": dataset.test.images, "test_y": dataset.test.labels,
  }
  return {k: jnp.asarray(v) for k, v in arrays.items()}, dataset


def build(config, dataset: data_lib.Dataset) -> Experiment:
  task = tasks.make_task(
      config.task.model, hidden=tuple(config.task.hidden),
      num_classes=dataset.num_classes, input_shape=dataset.image_shape,
      activation=config.task.activation, batch_size=config.task.batch_size)
  lopt_cfg = optimizers.LOptConfig(kind=config.lopt.kind,
                                   hidden=tuple(config.lopt.hidden))
  base = {"adam": optax.adam, "sgd": optax.sgd}[config.outer.optimizer]
  outer_tx = base(config.outer.learning_rate)
  if config.outer.clip:
    outer_tx = optax.chain(optax.clip_by_global_norm(config.outer.clip),
                           outer_tx)
  return Experiment(config, task, lopt_cfg, outer_tx)


def init_run_state(exp: Experiment, data) -> dict[str, Any]:
  """The run state at step 0; the particles burn in under the initial theta."""
  key = jax.random.key(exp.config.seed)
  k_theta, k_particles, rng = jax.random.split(jax.random.fold_in(key, 0), 3)
  theta = optimizers.init_theta(exp.lopt, k_theta)
  return {"step": jnp.zeros((), jnp.int32), "theta": theta,
          "outer_opt_state": exp.outer_tx.init(theta),
          "estimator_state": exp.estimator(data).init(theta, k_particles),
          "rng": rng}


def train_steps(exp: Experiment, data, run_state, num_steps: int):
  """Advances the run state `num_steps` outer steps in one `lax.scan`."""
  est = exp.estimator(data)

  def body(run_state, _):
    key = jax.random.fold_in(run_state["rng"], run_state["step"])
    state = outer.OuterState(run_state["theta"], run_state["outer_opt_state"],
                             run_state["estimator_state"])
    state, info = outer.outer_step(est, exp.outer_tx, state, key)
    return dict(run_state, step=run_state["step"] + 1, theta=state.theta,
                outer_opt_state=state.opt_state,
                estimator_state=state.estimator_state), info

  return jax.lax.scan(body, run_state, None, length=num_steps)


def eval_keys(config) -> jax.Array:
  """Held-out seeds: a key stream that training never draws from."""
  key = jax.random.fold_in(jax.random.key(config.seed), 1)
  return jax.random.split(key, config.eval.num_seeds)


def evaluate_optimizer(exp: Experiment, data, tx, keys):
  """Trains one fresh model per key for T steps; vmapped over keys."""
  run = functools.partial(inner.train_model, exp.task, tx, data,
                          num_steps=exp.config.inner.horizon)
  return jax.vmap(lambda k: run(key=k))(keys)


def _summarize_eval(result, prefix: str) -> dict[str, float]:
  losses = np.asarray(result["losses"])
  return {f"{prefix}/mean_train_loss": float(np.mean(losses)),
          f"{prefix}/final_train_loss": float(np.mean(losses[:, -10:])),
          f"{prefix}/test_accuracy": float(np.mean(result["test_accuracy"]))}


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, Any]:
  """Meta-trains a learned optimizer; resumes from workdir's checkpoints.

  Args:
    config: the experiment config (see configs/default.py).
    workdir: where checkpoints, metrics.jsonl and TensorBoard events go.
      Running again on the same workdir resumes from the newest complete
      checkpoint.

  Returns:
    The final run state.
  """
  check_config(config)
  data, dataset = load_data(config)
  exp = build(config, dataset)
  logging.info("Inner task: %s with %d parameters on %s %s; learned "
               "optimizer %s", config.task.model, exp.task.num_params,
               dataset.name, dataset.image_shape, exp.lopt)

  init_fn = jax.jit(functools.partial(init_run_state, exp))
  steps_per_dispatch = config.outer.steps_per_dispatch
  step_fn = jax.jit(functools.partial(train_steps, exp,
                                      num_steps=steps_per_dispatch),
                    donate_argnums=(1,))
  keys = eval_keys(config)
  horizon = config.inner.horizon

  @jax.jit
  def eval_learned(data, theta):
    tx = optimizers.learned_optimizer(theta, exp.lopt, horizon)
    return evaluate_optimizer(exp, data, tx, keys)

  os.makedirs(workdir, exist_ok=True)
  ckpt = checkpoint.Checkpointer(
      os.path.join(workdir, "checkpoints"),
      every_steps=config.checkpoint.every_steps, keep=config.checkpoint.keep)
  writer = metrics.MetricWriter(workdir)
  latest = ckpt.latest_step()
  if latest is None:
    run_state = init_fn(data)
    logging.info("Starting from scratch (burn-in included).")
  else:
    abstract = checkpoint.abstract_like(jax.eval_shape(init_fn, data))
    run_state = ckpt.restore(latest, abstract)
    logging.info("Resumed from the checkpoint at step %d.", latest)

  def meta_eval(step, theta):
    scores = _summarize_eval(eval_learned(data, theta), "eval/learned")
    writer.write(step, scores)
    logging.info("step %d: learned optimizer mean train loss %.4f "
                 "(Adam %.4f)", step, scores["eval/learned/mean_train_loss"],
                 adam_scores["eval/adam/mean_train_loss"])

  adam = optimizers.adam_baseline(config.eval.adam_learning_rate)
  adam_scores = _summarize_eval(
      jax.jit(lambda d: evaluate_optimizer(exp, d, adam, keys))(data),
      "eval/adam")
  step = int(run_state["step"])
  if step == 0:
    writer.write(0, adam_scores)
    meta_eval(0, run_state["theta"])

  num_steps = config.outer.num_steps
  inner_per_outer = make_estimator(config, _NoSystem(config.inner.horizon))
  inner_steps = (inner_per_outer.members * inner_per_outer.num_particles
                 * inner_per_outer.unroll_length)
  # Throughput is measured between log points, so compilation (in the first
  # window) shows up once instead of skewing every later figure.
  last_time, last_step = time.perf_counter(), step
  pending = []  # infos since the last log, still on the device
  while step < num_steps:
    run_state, info = step_fn(data, run_state)
    pending.append(info)
    previous, step = step, step + steps_per_dispatch
    ckpt.save(step, run_state, exp.saved_config(), force=step >= num_steps)
    if (step // config.log.every_steps > previous // config.log.every_steps
        or step >= num_steps):
      # Stacking waits for the dispatches; the only host sync of the loop.
      info = jax.tree.map(lambda *x: np.concatenate(x), *pending)
      pending = []
      now = time.perf_counter()
      rate = (step - last_step) / (now - last_time)
      last_time, last_step = now, step
      writer.write(step, {
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
      })
      logging.info("step %d/%d: meta-loss %.4f, %.0f inner steps/s, "
                   "ETA %.0f s", step, num_steps, np.mean(info["loss"]),
                   rate * inner_steps, (num_steps - step) / rate)
    if step // config.eval.every_steps > previous // config.eval.every_steps:
      meta_eval(step, run_state["theta"])
    if ckpt.reached_preemption(step):
      logging.warning("Preemption at step %d: checkpoint saved, exiting.",
                      step)
      break
  ckpt.wait_until_finished()
  ckpt.close()
  writer.close()
  return run_state
