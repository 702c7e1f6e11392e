"""What a resumed run may change: a checkpoint is never continued under a
config that computes something else.

`check_resume` compares the config saved in a checkpoint with the resuming
run's, field by field (`compare_configs`), and refuses every change outside
`RESUMABLE_FIELDS` with one `ConfigError` that lists them, old -> new.
The resumable fields are those that change when or how long a run goes
(step counts, cadences, logging), never what one outer step computes, so a
resumed run follows the trajectory of one that never stopped.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import ml_collections

from lopt import jsonio
from lopt.validation import ConfigError

#: Fields that a resumed run may change: each leaves the trajectory of the run
#: state (theta, the outer optimizer state, the particles, the rng) and every
#: metric it computes bit for bit what they would have been. All other fields
#: change what is computed (`check_resume` refuses them), including
#: `outer.steps_per_dispatch`: the checkpoint's step need not be a multiple
#: of a new one, and XLA may fuse a longer scan differently.
RESUMABLE_FIELDS: dict[str, str] = {
  "outer.num_steps": "where the run stops, not what a step computes",
  "log.every_steps": "how often metrics are read out, not their values",
  "eval.every_steps": (
    "when meta-evaluation runs; it reads theta and draws from a key stream "
    "that training never uses (`eval_keys`)"
  ),
  "checkpoint.every_steps": (
    "when the run state is saved; a resume from any step follows the same "
    "trajectory"
  ),
  "checkpoint.every_seconds": (
    "when the run state is saved, by the clock; the trajectory does not "
    "depend on which steps were saved"
  ),
  "checkpoint.keep": "how many saved steps stay on disk",
  "checkpoint.keep_period": "which older saved steps stay on disk",
  "task.data_dir": "where the dataset is read from, not which dataset",
}


@dataclasses.dataclass(frozen=True)
class ConfigChange:
  """One field whose value differs between a checkpoint and a config."""

  field: str
  #: The checkpoint's value (JSON form), or `NOT_SET` if it had none.
  old: Any
  #: The config's value (JSON form), or `NOT_SET` if it has none.
  new: Any

  @property
  def resumable(self) -> bool:
    """Whether a run may resume under the change (`RESUMABLE_FIELDS`)."""
    return self.field in RESUMABLE_FIELDS

  def __str__(self) -> str:
    return f"{self.field}: {_show(self.old)} -> {_show(self.new)}"


#: Stands for a field that one of the two compared configs does not have.
NOT_SET = object()


def _show(value: Any) -> str:
  return "(not set)" if value is NOT_SET else json.dumps(value)


def compare_configs(
  saved: Mapping[str, Any], config: ml_collections.ConfigDict
) -> list[ConfigChange]:
  """The fields whose values differ between a checkpoint and `config`.

  Args:
    saved: the checkpoint's JSON item, as `Experiment.saved_config` wrote it
      (`checkpoint.load_meta` and `Checkpointer.restore_config` read it).
    config: the config of the run that would resume it.

  Returns:
    One `ConfigChange` per differing leaf, sorted by field name. Both sides
    are compared in their JSON form (tuples as lists), as saved.
  """
  if not isinstance(saved, Mapping) or not isinstance(
    saved.get("config"), Mapping
  ):
    keys = sorted(saved) if isinstance(saved, Mapping) else type(saved)
    raise ConfigError(
      f"the checkpoint's saved config has no 'config' entry to compare "
      f"with (found {keys}); resume it with the lopt that wrote it, or "
      "start a new workdir"
    )
  old = jsonio.flatten(saved["config"])
  new = jsonio.flatten(json.loads(config.to_json()))
  changes = []
  for field in sorted(set(old) | set(new)):
    a, b = old.get(field, NOT_SET), new.get(field, NOT_SET)
    if a is NOT_SET or b is NOT_SET or a != b:
      changes.append(ConfigChange(field, a, b))
  return changes


def check_resume(
  saved: Mapping[str, Any],
  config: ml_collections.ConfigDict,
  *,
  allow_changes: bool = False,
  where: str = "the checkpoint",
) -> list[ConfigChange]:
  """Refuses to resume a checkpoint under a config that computes otherwise.

  Args:
    saved: the checkpoint's JSON item (see `compare_configs`).
    config: the config of the resuming run.
    allow_changes: resume even if fields outside `RESUMABLE_FIELDS` changed
      (the caller records them).
    where: the checkpoint, as the message names it.

  Returns:
    Every change, resumable or (with `allow_changes`) not.

  Raises:
    ConfigError: listing every changed field outside `RESUMABLE_FIELDS`
      (old -> new) and what to do, unless `allow_changes`.
  """
  changes = compare_configs(saved, config)
  refused = [c for c in changes if not c.resumable]
  if refused and not allow_changes:
    listing = "\n".join(f"  {c}" for c in refused)
    raise ConfigError(
      f"the config differs from the one that wrote {where} in "
      f"{len(refused)} field(s) that change what is computed (old -> "
      f"new):\n{listing}\n"
      "Resuming would continue that run's state under other settings, a "
      "mixture of two runs. Start the new run in a new workdir, or give "
      "the old values to continue the old one. To continue it under the "
      "new config on purpose, pass --allow_config_change to lopt.main "
      "(allow_config_change=True to lopt.train.train_and_evaluate); the "
      "change is then recorded in the log and in metrics.jsonl. Fields "
      f"that may change on resume: {', '.join(RESUMABLE_FIELDS)}."
    )
  return changes
