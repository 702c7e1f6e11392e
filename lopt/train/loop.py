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

import functools
import os
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from lopt import checkpoint, console, experiment, metrics, sharding, validation
from lopt.checkpoint import resume_policy
from lopt.experiment import Experiment
from lopt.learned import optimizers
from lopt.tasks import family
from lopt.train import outer


def _initial_keys(config) -> jax.Array:
  """(theta, particles, run rng): the keys of step 0, from the seed alone."""
  key = jax.random.key(config.seed)
  return jax.random.split(jax.random.fold_in(key, 0), 3)


def initial_theta(exp: Experiment):
  """The theta that a fresh run of `exp.config` starts from."""
  return optimizers.init_theta(exp.lopt, _initial_keys(exp.config)[0])


def init_run_state(exp: Experiment, data) -> dict[str, Any]:
  """The run state at step 0; the particles burn in under the initial theta."""
  _, k_particles, rng = _initial_keys(exp.config)
  theta = initial_theta(exp)
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


def sharded_functions(exp: Experiment, data):
  """The jitted `init_run_state` and `train_steps` with explicit shardings.

  Args:
    exp: the experiment; its mesh gives the shardings.
    data: the dataset arrays (replicated), or their abstract values.

  Returns:
    `(init_fn, steps_fn, abstract_state, state_shardings)`: `init_fn(data)`
    builds the run state; `steps_fn(data, run_state)` advances it
    `outer.steps_per_dispatch` steps and returns `(run_state, infos)`, with
    `run_state` donated; `abstract_state` is `jax.eval_shape(init_fn,
    data)`: the run state's shapes with its shardings, the restore target
    of a checkpoint; `state_shardings` are those shardings, leaf for leaf.
  """
  replicated = sharding.replicated(exp.mesh)
  state_shardings = sharding.run_state_shardings(
    jax.eval_shape(functools.partial(init_run_state, exp), data), exp.mesh
  )
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
  return init_fn, steps_fn, jax.eval_shape(init_fn, data), state_shardings


def _eval_scores(exp: Experiment, prefix: str, result) -> dict[str, float]:
  """`eval/<prefix>/[<task>/]<score>` of a per-task evaluation result."""
  scores = {}
  for name, per_task in sharding.to_host(result).items():
    where = f"eval/{prefix}/{name}/" if exp.is_family else f"eval/{prefix}/"
    for k, v in experiment.summarize_eval(per_task).items():
      scores[where + k] = v
  return scores


def _group_metrics(exp: Experiment, info) -> dict[str, float]:
  """Per-task `<task>/meta_loss`, `grad_norm`, `grad_snr`, `nonfinite_steps`.

  The meta-loss of a family task is its normalised loss; the SNR (median
  over the log interval) tells whether that task's estimate carries signal.
  """
  if not exp.is_family:
    return {}
  out = {}
  for g in exp.groups:
    out[f"{g.name}/meta_loss"] = float(np.mean(info[f"{g.name}/loss"]))
    out[f"{g.name}/grad_norm"] = float(np.mean(info[f"{g.name}/grad_norm"]))
    out[f"{g.name}/grad_snr"] = float(np.median(info[f"{g.name}/grad_snr"]))
    out[f"{g.name}/nonfinite_steps"] = float(
      np.sum(info[f"{g.name}/nonfinite"])
    )
  return out


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
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  allow_config_change: bool = False,
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
      The config must then be the checkpoint's, but for the fields of
      `experiment.RESUMABLE_FIELDS` (`num_steps`, cadences, ...).
    allow_config_change: resume even under a config that changes what is
      computed (`experiment.check_resume`); the changes are logged and
      counted in metrics.jsonl (`config_changes`) at the resumed step.

  Returns:
    The final run state (its arrays may span several processes; read them
    with `lopt.sharding.to_host`).

  Raises:
    validation.ConfigError: an invalid config, or one that the workdir's
      checkpoint cannot be resumed under.
  """
  # Installed first, so that a SIGTERM during start-up (data, compilation)
  # also ends in a checkpoint at the first step boundary.
  with _SigtermFlag() as sigterm:
    return _train_and_evaluate(config, workdir, sigterm, allow_config_change)


def _describe(exp: Experiment, dataset, mesh) -> None:
  """Logs what is being meta-trained, on what, in a few lines."""
  config, est = exp.config, exp.config.estimator
  theta_size = sum(
    x.size for x in jax.tree.leaves(optimizers.theta_shapes(exp.lopt))
  )
  for group in exp.groups:
    ds = dataset[group.name] if exp.is_family else dataset
    spec = group.spec
    logging.info(
      "%s: %s %s (%s) on %s %s, batch %d, T = %d; %s parameters%s",
      f"Task {spec.name}" if exp.is_family else "Task",
      spec.model,
      list(spec.hidden),
      spec.activation,
      ds.name,
      "x".join(map(str, ds.image_shape)),
      spec.batch_size,
      spec.horizon,
      f"{group.task.num_params:,}",
      f"; {spec.num_particles} particles, weight {spec.weight:g}, loss / "
      f"{group.loss_scale:.4g}"
      if exp.is_family
      else "",
    )
  fractions = family.batch_fractions(config)
  if fractions != (1.0,):
    logging.info(
      "Augmentation: each episode trains on %s of every batch",
      " or ".join(f"{f:g}" for f in fractions),
    )
  num_particles = sum(g.spec.num_particles for g in exp.groups)
  logging.info(
    "Learned optimizer: %s %s, %s parameters; estimator %s, %d particles, "
    "W = %d, sigma = %g; outer %s lr %g for %d steps",
    exp.lopt.kind,
    list(exp.lopt.hidden),
    f"{theta_size:,}",
    est.name,
    num_particles,
    est.unroll_length,
    est.sigma,
    config.outer.optimizer,
    config.outer.learning_rate,
    config.outer.num_steps,
  )
  logging.info(
    "Devices: %d x %s in %d process(es), %d particles each",
    mesh.size,
    jax.devices()[0].platform,
    jax.process_count(),
    num_particles // mesh.size,
  )


def train_seconds_at(workdir: str, step: int) -> float:
  """`train_seconds` logged at the newest log point at or before `step`.

  What a run resumed from the checkpoint of `step` continues to count
  from; 0.0 before the first log point.
  """
  seconds = 0.0
  for row in metrics.read_metrics(workdir):
    if row["step"] <= step and "train_seconds" in row:
      seconds = row["train_seconds"]
  return seconds


def _resume(ckpt, writer, step, config, abstract, allow_config_change):
  """Restores the checkpoint of `step` if `config` may continue it.

  Raises:
    validation.ConfigError: the config changes what is computed (unless
      `allow_config_change`), or the checkpoint's run state cannot fit it.
  """
  # Before anything is read: a changed config would continue this run's
  # state under other settings.
  where = f"the checkpoint of step {step} in {ckpt.directory}"
  changes = resume_policy.check_resume(
    ckpt.restore_config(step),
    config,
    allow_changes=allow_config_change,
    where=where,
  )
  overridden = [c for c in changes if not c.resumable]
  for change in changes:
    if change.resumable:
      logging.info("Resuming with a changed %s.", change)
  if overridden:
    logging.warning(
      "Resuming %s under a config that changes what is computed "
      "(--allow_config_change): %s",
      where,
      "; ".join(map(str, overridden)),
    )
  try:
    run_state = ckpt.restore(step, abstract)
  except ValueError as e:
    if not overridden:
      raise
    # The changed fields size the run state (particles, architecture,
    # estimator): no override can continue the old state under them.
    raise validation.ConfigError(
      f"{e}. The run state of {where} cannot continue under the changed "
      f"{', '.join(c.field for c in overridden)}: use a new workdir."
    ) from None
  if overridden:
    writer.write(step, {"config_changes": len(overridden)})
  return run_state


def _train_and_evaluate(
  config, workdir, sigterm: _SigtermFlag, allow_config_change: bool = False
):
  """`train_and_evaluate`, with SIGTERM already turned into `sigterm`."""
  mesh = sharding.make_mesh()
  validation.check_config(config, mesh.size)
  data, dataset = experiment.load_data(config, mesh)
  exp = experiment.build(config, dataset, mesh)
  _describe(exp, dataset, mesh)

  replicated = sharding.replicated(mesh)
  init_fn, step_fn, abstract_state, state_shardings = sharded_functions(
    exp, data
  )
  steps_per_dispatch = config.outer.steps_per_dispatch
  names = [g.name for g in exp.groups]

  # The evaluation runs replicated (theta and the data are); its keys are
  # made inside jit, since a host-made key array would live on one local
  # device, which a multi-process computation cannot take as input. Every
  # task of a family is scored, each over its own horizon.
  @functools.partial(jax.jit, out_shardings=replicated)
  def eval_learned(data, theta):
    return {
      g.name: experiment.evaluate_optimizer(
        exp,
        exp.group_data(data, g.name),
        optimizers.learned_optimizer(theta, exp.lopt, g.horizon),
        experiment.eval_keys(config),
        g.name,
      )
      for g in exp.groups
    }

  adam = optimizers.adam_baseline(config.eval.adam_learning_rate)

  @functools.partial(jax.jit, out_shardings=replicated)
  def eval_adam(data):
    return {
      name: experiment.evaluate_optimizer(
        exp,
        exp.group_data(data, name),
        adam,
        experiment.eval_keys(config),
        name,
      )
      for name in names
    }

  if "://" not in workdir:
    os.makedirs(workdir, exist_ok=True)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  ckpt = checkpoint.Checkpointer(
    ckpt_dir,
    every_steps=config.checkpoint.every_steps,
    keep=config.checkpoint.keep,
  )
  writer = metrics.MetricWriter(workdir)  # a no-op on processes other than 0
  latest = ckpt.latest_step()
  if latest is None:
    run_state = init_fn(data)
    train_seconds = 0.0
    writer.write_hparams(config)
    logging.info("Starting from scratch in %s.", workdir)
  else:
    # The targets (`abstract_state`) carry this run's shardings, from
    # init_fn's out_shardings, whatever the device count of the run that
    # wrote the checkpoint: that is the elastic resume.
    try:
      # A corrupted newest checkpoint: the newest intact one, with a warning.
      latest, run_state = ckpt.restore_newest_intact(
        lambda step: _resume(
          ckpt, writer, step, config, abstract_state, allow_config_change
        )
      )
    except (validation.ConfigError, checkpoint.CorruptCheckpointError):
      ckpt.close()
      writer.close()
      raise
    train_seconds = train_seconds_at(workdir, latest)
    logging.info(
      "Resuming from the checkpoint of step %d in %s.", latest, ckpt_dir
    )
  step = int(sharding.to_host(run_state["step"]))
  num_steps = config.outer.num_steps
  if step < num_steps:
    start = time.perf_counter()
    step_fn = step_fn.lower(data, run_state).compile()
    logging.info(
      "Compiled the outer step (%d per dispatch) in %s.",
      steps_per_dispatch,
      console.duration(time.perf_counter() - start),
    )

  adam_scores = {}

  def adam_baseline():
    # Computed on first use: a resumed run that reaches no evaluation step
    # never compiles it.
    if not adam_scores:
      adam_scores.update(_eval_scores(exp, "adam", eval_adam(data)))
    return adam_scores

  def meta_eval(step, theta):
    scores = _eval_scores(exp, "learned", eval_learned(data, theta))
    if exp.is_family:
      # Each task's learned / Adam ratio of the mean train loss, and their
      # mean over tasks: the family's score on its own tasks.
      ratios = {
        f"eval/ratio/{name}": scores[f"eval/learned/{name}/mean_train_loss"]
        / adam_baseline()[f"eval/adam/{name}/mean_train_loss"]
        for name in names
      }
      scores.update(ratios)
      scores["eval/ratio/mean"] = float(np.mean(list(ratios.values())))
    writer.write(step, scores)
    if exp.is_family:
      logging.info(
        "Eval at step %d: learned / Adam (lr %g) mean train loss, mean over "
        "%d tasks %.3f (%s; %d held-out seeds)",
        step,
        config.eval.adam_learning_rate,
        len(names),
        scores["eval/ratio/mean"],
        ", ".join(f"{n} {scores[f'eval/ratio/{n}']:.3f}" for n in names),
        config.eval.num_seeds,
      )
      return
    logging.info(
      "Eval at step %d: learned optimizer %.4f, Adam (lr %g) %.4f (mean "
      "train loss over T = %d, %d held-out seeds)",
      step,
      scores["eval/learned/mean_train_loss"],
      config.eval.adam_learning_rate,
      adam_baseline()["eval/adam/mean_train_loss"],
      config.inner.horizon,
      config.eval.num_seeds,
    )

  # eval.every_steps = 0 turns meta-evaluation off (e.g. on a pod slice,
  # where it would run replicated on every device; lopt.evaluate can score
  # the checkpoints afterwards).
  eval_every = config.eval.every_steps
  if step == 0 and eval_every:
    writer.write(0, adam_baseline())
    meta_eval(0, run_state["theta"])

  inner_steps = exp.estimator(data).steps_per_estimate
  saved_config = exp.saved_config()
  # `train_seconds` counts the loop's dispatches and checkpoint saves, not
  # compilation (done above) or meta-evaluation (the clock restarts after
  # it), so it is the wall-clock that training itself took.
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
      train_seconds += now - last_time
      rate = (step - last_step) / (now - last_time)
      last_time, last_step = now, step
      loss = float(np.mean(info["loss"]))
      writer.write(
        step,
        {
          "meta_loss": loss,
          "grad_norm": float(np.mean(info["grad_norm"])),
          # Signal-to-noise of the ES estimate: far below 1 means sigma or
          # the particle count is off and updates are mostly noise.
          "grad_snr": float(np.median(info["grad_snr"])),
          "grad_var": float(np.mean(info["grad_var"])),
          "nonfinite_steps": float(np.sum(info["nonfinite"])),
          "skipped_updates": float(np.sum(~info["applied"])),
          "inner_steps_per_sec": rate * inner_steps,
          "outer_steps_per_sec": rate,
          "train_seconds": train_seconds,
          **_group_metrics(exp, info),
        },
      )
      logging.info(
        "step %d/%d: meta-loss %.4f, %s inner steps/s, ETA %s",
        step,
        num_steps,
        loss,
        f"{rate * inner_steps:,.0f}",
        console.duration((num_steps - step) / rate),
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
      last_time = time.perf_counter()
  ckpt.wait_until_finished()
  ckpt.close()
  writer.close()
  logging.info(
    "Meta-trained to step %d of %d (%s of training). Checkpoints: %s; "
    "metrics: %s; TensorBoard: tensorboard --logdir %s",
    step,
    num_steps,
    console.duration(train_seconds),
    ckpt_dir,
    os.path.join(workdir, metrics.METRICS_FILE),
    workdir,
  )
  return run_state
