"""Meta-training: `train_and_evaluate(config, workdir)`, read top to bottom.

The recipe: check the config, load the data, build the experiment and its
jitted outer step (`lopt.train.step`), start from scratch or resume
(`lopt.train.resume`), then dispatch outer steps until `outer.num_steps`,
saving checkpoints on the config's cadence, writing progress every
`log.every_steps` (`lopt.train.report`) and evaluating the learned optimizer
every `eval.every_steps` (`lopt.train.evaluation`). The host waits on the
device only at a log point, so dispatches queue back to back in between.

Preemption: with `jax.distributed`, orbax's preemption sync point makes every
process save the same step and stop. A single process turns SIGTERM into a
flag instead, checked between dispatches: the run then saves the step it has
reached, waits for the save to commit and returns normally; `lopt.main` then
exits with status 75 (`EXIT_PREEMPTED`), since the run stopped early.
"""

import os
import signal
import threading
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from lopt import checkpoint, console, experiment, metrics, sharding, validation
from lopt.train import evaluation, report, resume, step


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
      `lopt.checkpoint.resume_policy.RESUMABLE_FIELDS` (`num_steps`,
      cadences, ...).
    allow_config_change: resume even under a config that changes what is
      computed (`resume_policy.check_resume`); the changes are logged and
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


def _train_and_evaluate(
  config, workdir, sigterm: _SigtermFlag, allow_config_change: bool
):
  """`train_and_evaluate`, with SIGTERM already turned into `sigterm`."""
  # 1. The experiment: config checked, data on the devices, parts built.
  mesh = sharding.make_mesh()
  validation.check_config(config, mesh.size)
  data, dataset = experiment.load_data(config, mesh)
  exp = experiment.build(config, dataset, mesh)
  report.describe(exp, dataset, mesh)
  init_fn, step_fn, abstract_state, _ = step.sharded_functions(exp, data)

  # 2. Where to start: step 0, or the newest intact checkpoint.
  if "://" not in workdir:
    os.makedirs(workdir, exist_ok=True)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  ckpt = checkpoint.Checkpointer(
    ckpt_dir,
    every_steps=config.checkpoint.every_steps,
    every_seconds=config.checkpoint.get("every_seconds", 0.0),
    keep=config.checkpoint.keep,
    keep_period=config.checkpoint.get("keep_period", 0),
  )
  writer = metrics.MetricWriter(workdir)  # a no-op on processes other than 0
  try:
    run_state, train_seconds = resume.start(
      ckpt,
      writer,
      workdir,
      config,
      init_fn,
      data,
      abstract_state,
      allow_config_change,
    )
  except (validation.ConfigError, checkpoint.CorruptCheckpointError):
    ckpt.close()
    writer.close()
    raise
  current = int(sharding.to_host(run_state["step"]))
  num_steps = config.outer.num_steps
  steps_per_dispatch = config.outer.steps_per_dispatch
  if current < num_steps:
    start = time.perf_counter()
    step_fn = step_fn.lower(data, run_state).compile()
    logging.info(
      "Compiled the outer step (%d per dispatch) in %s.",
      steps_per_dispatch,
      console.duration(time.perf_counter() - start),
    )

  # 3. Evaluation of theta on the run's own tasks; eval.every_steps = 0
  # turns it off (e.g. on a pod slice, where it would run replicated on
  # every device; lopt.evaluate can score the checkpoints afterwards).
  meta_eval = evaluation.MetaEvaluator(exp, data, writer)
  eval_every = config.eval.every_steps
  if current == 0 and eval_every:
    writer.write(0, meta_eval.adam())
    meta_eval(0, run_state["theta"])

  # 4. The loop. `train_seconds` counts dispatches and checkpoint saves, not
  # compilation (done above) or meta-evaluation (the clock restarts after
  # it), so it is the wall-clock that training itself took.
  inner_steps = exp.estimator(data).steps_per_estimate
  saved_config = exp.saved_config()
  last_time, last_step = time.perf_counter(), current
  pending = []  # infos since the last log point, still on the device
  while current < num_steps:
    run_state, info = step_fn(data, run_state)
    pending.append(info)
    previous, current = current, current + steps_per_dispatch
    # Read the flag once: the handler may fire at any moment, and this
    # step's save and exit must agree.
    stop = sigterm.requested
    ckpt.save(
      current, run_state, saved_config, force=stop or current >= num_steps
    )
    if _crossed(previous, current, config.log.every_steps) or (
      stop or current >= num_steps
    ):
      # Stacking waits for the dispatches: the only host sync of the loop.
      info = jax.tree.map(
        lambda *x: np.concatenate(x), *sharding.to_host(pending)
      )
      pending = []
      now = time.perf_counter()
      train_seconds += now - last_time
      rate = (current - last_step) / (now - last_time)
      last_time, last_step = now, current
      report.progress(
        exp,
        writer,
        current,
        info,
        outer_steps_per_sec=rate,
        inner_steps_per_outer=inner_steps,
        train_seconds=train_seconds,
      )
    if stop:
      logging.warning(
        "SIGTERM: saved the checkpoint of step %d; exiting.", current
      )
      break
    # Every process calls this at every step: it is a sync point.
    if ckpt.reached_preemption(current):
      logging.warning(
        "Preemption at step %d: checkpoint saved, exiting.", current
      )
      break
    if eval_every and _crossed(previous, current, eval_every):
      meta_eval(current, run_state["theta"])
      last_time = time.perf_counter()

  # 5. Every save committed, then the summary.
  ckpt.wait_until_finished()
  ckpt.close()
  writer.close()
  report.summary(workdir, ckpt_dir, current, num_steps, train_seconds)
  return run_state


def _crossed(previous: int, current: int, every: int) -> bool:
  """Whether a multiple of `every` lies in (previous, current]."""
  return current // every > previous // every
