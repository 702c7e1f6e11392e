"""Where a run starts: from scratch, or from the newest intact checkpoint.

Restarting the command that a kill or a preemption stopped continues the
run: the newest complete checkpoint of the workdir is restored, after its
config has been compared with the one given (`lopt.checkpoint.
resume_policy`: a run never silently continues under a config that computes
something else). The restore targets carry this run's shardings, whatever
the device count of the run that wrote the checkpoint: that is the elastic
resume. A corrupted newest checkpoint is set aside, with a warning, for the
newest intact one.
"""

from typing import Any

from absl import logging

from lopt import checkpoint, metrics, validation
from lopt.checkpoint import resume_policy


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


def _restore(ckpt, writer, step, config, abstract, allow_config_change):
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


def start(
  ckpt: checkpoint.Checkpointer,
  writer: metrics.MetricWriter,
  workdir: str,
  config,
  init_fn,
  data,
  abstract_state,
  allow_config_change: bool = False,
) -> tuple[Any, float]:
  """The run state to continue from, and the training seconds it took.

  Args:
    ckpt: the run's checkpointer.
    writer: the run's metric writer (hparams of a fresh run, config changes
      of a resumed one).
    workdir: the run's workdir (its metrics say how long training took).
    config: the config of this run.
    init_fn: builds the step-0 run state from `data`.
    data: the dataset arrays.
    abstract_state: the run state's shapes and shardings, the restore target.
    allow_config_change: see `lopt.train.train_and_evaluate`.

  Raises:
    validation.ConfigError: the workdir's checkpoint cannot be continued
      under `config`.
    checkpoint.CorruptCheckpointError: no intact checkpoint is left.
  """
  latest = ckpt.latest_step()
  if latest is None:
    writer.write_hparams(config)
    logging.info("Starting from scratch in %s.", workdir)
    return init_fn(data), 0.0
  latest, run_state = ckpt.restore_newest_intact(
    lambda step: _restore(
      ckpt, writer, step, config, abstract_state, allow_config_change
    )
  )
  logging.info(
    "Resuming from the checkpoint of step %d in %s.", latest, ckpt.directory
  )
  return run_state, train_seconds_at(workdir, latest)
