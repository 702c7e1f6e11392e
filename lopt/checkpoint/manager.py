"""The save policy of meta-training checkpoints: `Checkpointer`.

A thin policy layer over orbax's `CheckpointManager`: when to save (every
`every_steps` steps and/or `every_seconds` seconds, on preemption, and the
first call of a fresh run), how many checkpoints to keep, saving
asynchronously without delaying the training loop, and which step to
restore. What a step holds on disk, and how it is read, is
`lopt.checkpoint.format`.

Typical use in a training loop::

  with Checkpointer(ckpt_dir, every_steps=100, keep=3) as ckpt:
    step = ckpt.latest_step()
    if step is not None:
      # init_fn: the jitted init with out_shardings, so the targets carry
      # this run's shardings.
      state = ckpt.restore(step, jax.eval_shape(init_fn, data))
    for step in range(first, last + 1):
      state = train_step(state)
      ckpt.save(step, state, config, force=step == last)
      if ckpt.reached_preemption(step):
        break

Every process of a multi-host run must make the same calls with the same
arguments; orbax itself decides which process writes the shared metadata.

Corrupted checkpoints: a complete step whose files were truncated or garbled
afterwards (a bad disk, a partial copy, a hand edit) raises
`CorruptCheckpointError`, never a restore of wrong values.
`Checkpointer.restore_newest_intact` falls back from such steps to the newest
intact one, with a warning, and moves the damaged steps aside (`set_aside`),
so that the run saves those steps anew; `load_meta` names the damaged step
and the intact ones.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from orbax.checkpoint.checkpoint_managers import (
  save_decision_policy as _policies,
)

from lopt.checkpoint import digests
from lopt.checkpoint.digests import CorruptCheckpointError
from lopt.checkpoint.format import (
  CONFIG,
  CORRUPTED_SUFFIX,
  DIGEST,
  ESTIMATOR_STATE,
  INNER,
  META,
  array_restore,
  as_path,
  check_against_metadata,
  describe_directory,
  is_finalized,
  item_handlers,
  json_config,
  manager_options,
  read_step,
  restore_targets,
  split_run_state,
)

PyTree = Any

_T = TypeVar("_T")


@jax.jit
def _copy_arrays(arrays: list[jax.Array]) -> list[jax.Array]:
  # One program, so it works alike on arrays that span processes (each
  # copies its own shards). Key arrays go through their key data:
  # `jax.device_put(may_alias=False)` shares the buffers of a multi-device
  # key array (jax 0.10.2), and refuses arrays that span processes.
  def copy(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      data = jnp.copy(jax.random.key_data(x))
      return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    return jnp.copy(x)

  return [copy(x) for x in arrays]


def _device_copy(tree: PyTree) -> PyTree:
  """`tree` with every jax.Array copied into fresh buffers on its devices."""
  leaves, treedef = jax.tree.flatten(tree)
  arrays = [i for i, x in enumerate(leaves) if isinstance(x, jax.Array)]
  for i, copy in zip(
    arrays, _copy_arrays([leaves[i] for i in arrays]), strict=True
  ):
    leaves[i] = copy
  return jax.tree.unflatten(treedef, leaves)


def save_policy(
  every_steps: int, every_seconds: float
) -> _policies.AnySavePolicy:
  """Orbax's decision of when to save: every `every_steps` steps and/or
  `every_seconds` seconds (0 turns either off), on preemption, and the first
  step of a fresh run."""
  policies = [
    _policies.InitialSavePolicy(),
    _policies.PreemptionCheckpointingPolicy(),
  ]
  if every_steps:
    policies.append(_policies.FixedIntervalPolicy(every_steps))
  if every_seconds:
    policies.append(
      _policies.ContinuousCheckpointingPolicy(
        minimum_interval_secs=every_seconds
      )
    )
  return _policies.AnySavePolicy(policies)


class Checkpointer:
  """Saves and restores the run state of meta-training.

  A thin policy layer over `ocp.CheckpointManager`: call `save` every step and
  the manager decides (every `every_steps` steps or `every_seconds` seconds,
  on preemption, and always the first call of a fresh run: orbax's
  InitialSavePolicy); keeps the newest `keep` checkpoints (and the multiples
  of `keep_period`); saves asynchronously.

  An async save costs the training loop's thread almost nothing: `save` only
  dispatches an on-device copy of the run state (so the caller may donate
  the buffers right after) and the digests of that copy, and hands the copy
  to orbax at the next call into the Checkpointer, by which time the caller
  has queued its next training step; orbax's own work then overlaps that
  step instead of delaying it. A save is committed once
  `wait_until_finished` (or `close`) returns, as with orbax; until then it
  holds one extra device copy of the run state.

  Use it as a context manager, or call `close()`, so that the last async save
  is finished before the process exits.
  """

  def __init__(
    self,
    directory: str | os.PathLike[str],
    *,
    every_steps: int = 0,
    every_seconds: float = 0.0,
    keep: int,
    keep_period: int = 0,
    async_save: bool = True,
  ):
    """Opens (and creates) a checkpoint directory.

    Args:
      directory: where the step directories go; local or a URL (gs://...).
      every_steps: save at every multiple of this step (config
        `checkpoint.every_steps`); 0 = not by step count.
      every_seconds: save at the first step at least this many seconds after
        the previous save began, so that a hard kill loses at most about
        that much work whatever a step costs (`checkpoint.every_seconds`;
        orbax's `ContinuousCheckpointingPolicy`, which process 0 decides for
        every process); 0 = not by time. At least one of the two is set.
      keep: how many of the newest checkpoints to keep (`checkpoint.keep`).
      keep_period: also keep every checkpoint whose step is a multiple of
        this (`checkpoint.keep_period`); 0 = none.
      async_save: write in the background (see the class docstring); False
        writes every save before `save` returns.
    """
    if (
      every_steps < 0 or every_seconds < 0 or not (every_steps or every_seconds)
    ):
      raise ValueError(
        "checkpoint.every_steps and checkpoint.every_seconds must be >= 0 "
        f"and not both 0, got {every_steps} and {every_seconds}"
      )
    if keep < 1:
      raise ValueError(f"checkpoint.keep must be >= 1, got {keep}")
    self._directory = as_path(directory)
    self._options = manager_options(
      save_decision_policy=save_policy(every_steps, every_seconds),
      max_to_keep=keep,
      keep_period=keep_period or None,
      enable_async_checkpointing=async_save,
      create=True,
    )
    self._manager = ocp.CheckpointManager(
      self._directory, options=self._options, item_handlers=item_handlers()
    )
    self._set_asides = 0  # barrier names must be unique
    self._async = async_save
    self._deferred: Callable[[], None] | None = None  # the next orbax save

  @property
  def directory(self) -> epath.Path:
    """The checkpoint directory (absolute)."""
    return self._directory

  def all_steps(self) -> list[int]:
    """Returns the steps of all complete checkpoints, oldest first.

    A save that was interrupted, or is still being written asynchronously, is
    never among them.
    """
    # The manager lists the finalized steps it found when it opened the
    # directory, plus those this process saved since: the newest of these
    # may still be in flight.
    self._write_deferred()
    return sorted(
      s
      for s in self._manager.all_steps()
      if is_finalized(self._directory / str(s))
    )

  def latest_step(self) -> int | None:
    """Returns the newest complete checkpoint step, or None if there is none."""
    steps = self.all_steps()
    return steps[-1] if steps else None

  def save(
    self,
    step: int,
    run_state: Mapping[str, Any],
    config: Mapping[str, Any],
    *,
    force: bool = False,
  ) -> bool:
    """Saves `run_state` at `step` if the policy says so.

    Args:
      step: the outer step; checkpoints are named by it.
      run_state: the run state dict (see `lopt.checkpoint.format`).
      config: the resolved config, JSON-able (a ConfigDict is converted).
      force: save whatever the policy says, e.g. at the final step. A step
        that is already saved is not written again.

    Returns:
      Whether a save was started.
    """
    step = int(step)
    self._write_deferred()
    if force:
      if step in self._manager.all_steps():
        return False
    elif not self._manager.should_save(step):
      # The common case, every dispatch: decided before any argument is
      # built (the config's JSON round trip, orbax's Composite).
      return False
    meta, inner = split_run_state(run_state)
    config = json_config(config)
    # A forced save is the last before a stop: nothing to overlap.
    deferred = self._async and not force
    if deferred:
      # The caller queues its next step (donating run_state) before orbax
      # reads this copy.
      meta, inner = _device_copy((meta, inner))
    arrays = digests.start(
      digests.named_leaves("", meta)
      + digests.named_leaves(ESTIMATOR_STATE + ".", inner)
    )

    def write() -> None:
      items = {
        META: ocp.args.PyTreeSave(meta),
        CONFIG: ocp.args.JsonSave(config),
        DIGEST: ocp.args.JsonSave(digests.record(arrays(), config)),
      }
      # orbax refuses an empty pytree; a stateless estimator (FullES) has
      # no estimator-state item at all.
      if jax.tree.leaves(inner):
        items[INNER] = ocp.args.PyTreeSave(inner)
      args = ocp.args.Composite(**items)
      # Forced: the policy has already said yes (or force did).
      self._manager.save(step, args=args, force=True)

    if deferred:
      self._deferred = write
    else:
      write()
    return True

  def _write_deferred(self) -> None:
    """Hands the deferred save, if any, to orbax."""
    write, self._deferred = self._deferred, None
    if write is not None:
      write()

  def _check_step(self, step: int | None) -> int:
    steps = self.all_steps()
    if step is None:
      if not steps:
        raise FileNotFoundError(
          f"No complete checkpoint in {self._directory}: "
          f"{describe_directory(self._directory)}"
        )
      return steps[-1]
    if int(step) not in steps:
      raise FileNotFoundError(
        f"No complete checkpoint for step {step} in {self._directory}; "
        f"complete steps: {steps}"
      )
    return int(step)

  def restore(
    self, step: int | None, abstract_run_state: Mapping[str, Any]
  ) -> dict[str, Any]:
    """Restores the run state saved at `step`.

    The restored arrays get the shardings of `abstract_run_state`, whatever
    the device count of the run that wrote the checkpoint; this is what makes
    resuming onto a different number of devices or hosts work. The number of
    particles must still divide the new device count.

    Args:
      step: the step to restore; None for the newest complete one.
      abstract_run_state: the run state as a pytree of `jax.ShapeDtypeStruct`
        with the caller's current shardings, e.g. `jax.eval_shape(init_fn,
        data)` of the jitted init function (its `out_shardings` give the
        shardings). Live arrays are accepted too; their shardings are used.
        A leaf without a sharding is restored replicated.

    Returns:
      The run state dict.
    """
    step = self._check_step(step)
    abstract_meta, abstract_inner = split_run_state(
      restore_targets(abstract_run_state)
    )
    step_dir = self._directory / str(step)
    where = str(step_dir)
    # A stateless estimator's checkpoint has no estimator-state item.
    stateful = bool(jax.tree.leaves(abstract_inner))
    if not stateful and (step_dir / INNER).exists():
      raise ValueError(
        f"Checkpoint {where} holds an estimator state, but the run state "
        f"to restore has none ({ESTIMATOR_STATE} = {abstract_inner!r}): it "
        "was written by another estimator"
      )
    try:
      metadata = self._manager.item_metadata(step)
      metadata = metadata[META], metadata[INNER] if stateful else None
    except Exception as e:  # Whatever orbax and TensorStore raise.
      raise CorruptCheckpointError(
        f"Checkpoint {where} is corrupted: its metadata cannot be read "
        f"({digests.short_error(e)})"
      ) from e
    # Checked here, before reading, because orbax's own shape error comes out
    # of its async reader with less context (and noise about its event loop).
    check_against_metadata("", abstract_meta, metadata[0], where)
    check_against_metadata(
      ESTIMATOR_STATE + ".", abstract_inner, metadata[1], where
    )
    items = {META: array_restore(abstract_meta)}
    if stateful:
      items[INNER] = array_restore(abstract_inner)
    restored = read_step(self._manager, self._directory, step, items)
    inner = restored[INNER] if stateful else abstract_inner
    digests.check_arrays(
      where,
      restored.get(DIGEST),
      digests.named_leaves("", restored[META])
      + digests.named_leaves(ESTIMATOR_STATE + ".", inner),
    )
    return {
      k: inner if k == ESTIMATOR_STATE else restored[META][k]
      for k in abstract_run_state
    }

  def restore_config(self, step: int | None = None) -> dict[str, Any]:
    """Returns the config JSON saved at `step` (None: the newest complete).

    `lopt.train` compares it with the config of a resuming run before it
    reads any array.
    """
    step = self._check_step(step)
    restored = read_step(
      self._manager, self._directory, step, {CONFIG: ocp.args.JsonRestore()}
    )
    digests.check_config(
      str(self._directory / str(step)), restored.get(DIGEST), restored[CONFIG]
    )
    return restored[CONFIG]

  def restore_newest_intact(
    self, read: Callable[[int], _T]
  ) -> tuple[int, _T] | None:
    """Reads the newest complete step that is not corrupted.

    Calls `read(step)` on the complete steps, newest first, until one does
    not raise `CorruptCheckpointError`. The corrupted steps newer than that
    one are then set aside (see `set_aside`), each with a warning, so that
    the run can save those steps again; other errors of `read` (a config
    that does not fit, say) propagate at once.

    Args:
      read: restores one step, e.g. `lambda s: ckpt.restore(s, abstract)`;
        every process must make the same calls.

    Returns:
      `(step, read(step))`, or None if there is no complete step at all.

    Raises:
      CorruptCheckpointError: every complete step is corrupted. Nothing is
        moved then: the message names each step and what is wrong with it.
    """
    corrupted = []
    for step in reversed(self.all_steps()):
      try:
        result = read(step)
      except CorruptCheckpointError as e:
        logging.warning("%s; trying the checkpoint before it.", e)
        corrupted.append((step, e))
        continue
      for bad, _ in corrupted:
        logging.warning(
          "Resuming from step %d, the newest intact checkpoint; the "
          "corrupted one of step %d was moved to %s.",
          step,
          bad,
          self.set_aside(bad),
        )
      return step, result
    if corrupted:
      raise CorruptCheckpointError(
        f"No intact checkpoint in {self._directory}: "
        + "; ".join(str(e) for _, e in corrupted)
        + ". Nothing was changed: restore the directory from a copy, or "
        "move these steps away (or use a new workdir) to start over."
      )
    return None

  def set_aside(self, step: int) -> epath.Path:
    """Renames a corrupted step's directory to `<step>.corrupted[-<n>]`.

    The step is then no checkpoint to orbax (neither listed nor counted by
    the save policy), so the run saves that step anew when it gets there;
    the damaged files stay for inspection. Every process must call it (the
    primary process renames, then all of them wait for it).

    Returns:
      The new path.
    """
    source = self._directory / str(int(step))
    target = self._directory / f"{int(step)}{CORRUPTED_SUFFIX}"
    n = 1
    while target.exists():
      n += 1
      target = self._directory / f"{int(step)}{CORRUPTED_SUFFIX}-{n}"
    self.wait_until_finished()
    # Every process has chosen the same name before the primary renames.
    self._set_asides += 1
    barrier = f"lopt_set_aside_{self._set_asides}"
    ocp.multihost.sync_global_processes(barrier + "_named")
    if ocp.multihost.is_primary_host(0):
      source.rename(target)
    ocp.multihost.sync_global_processes(barrier + "_renamed")
    # A fresh manager: the old one still counts the step as saved.
    self._manager.close()
    self._manager = ocp.CheckpointManager(
      self._directory, options=self._options, item_handlers=item_handlers()
    )
    return target

  def reached_preemption(self, step: int) -> bool:
    """Whether all processes agreed to stop at `step` (e.g. after SIGTERM).

    Only fires when `jax.distributed` is initialised. The preemption policy
    makes `save(step, ...)` write this step, so the caller should save, then
    call this, then `wait_until_finished()` and stop.

    Args:
      step: the current step.

    Returns:
      True at the preemption sync point.
    """
    return self._manager.reached_preemption(step)

  def wait_until_finished(self) -> None:
    """Blocks until every save so far is committed."""
    self._write_deferred()
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Finishes pending saves and releases the manager."""
    self._write_deferred()
    self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
