"""Checkpoints of the meta-training run state, with orbax.

This is the only module of `lopt` that imports orbax: the V0
`CheckpointManager` API used here is stable, but orbax's V1 API is still being
renamed, so a later switch should touch this file only.

A checkpoint step holds four items (`ocp.args.Composite`):

- `meta`: the run state without `estimator_state`, i.e. `step`, `theta`,
  `outer_opt_state`, `rng` and anything else the trainer adds. Replicated and
  small; this is all that export needs.
- `inner`: `estimator_state`, the persistent state of every particle. Its
  leaves have a leading particle axis that is usually sharded over the
  `particles` mesh axis, so every process writes its own shards. A
  stateless estimator (FullES) has none, and its checkpoints no `inner`
  item (orbax refuses an empty one).
- `config`: the resolved config as JSON, so that a checkpoint can be loaded
  without the config file that produced it.
- `digest`: a 32-bit digest of every array and a SHA-256 of the config,
  checked on every restore (see "Corrupted checkpoints" below).

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
intact one, with a warning, and moves the damaged steps aside; `load_meta`
names the damaged step and the intact ones.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from orbax.checkpoint.experimental.v1 import options as ocp_v1_options

from lopt.checkpoint import digests
from lopt.checkpoint.digests import CorruptCheckpointError  # noqa: F401  (raised here)

PyTree = Any

ESTIMATOR_STATE = "estimator_state"
META = "meta"
INNER = "inner"
CONFIG = "config"
DIGEST = "digest"
#: Suffix of a corrupted step's directory once it is set aside: not a step
#: name to orbax (which reads `<int>` and `<prefix>_<int>` only).
CORRUPTED_SUFFIX = ".corrupted"

_T = TypeVar("_T")


# What "complete" means: orbax finalizes a step by writing its commit file as
# the very last act of a save, on every file system (on a local disk it also
# renames the step's tmp directory first). Validating steps in COMMIT_FILE
# mode therefore also rejects a plain `<step>` directory without that file (a
# partial copy, or one made by hand), which orbax's default AUTO mode would
# accept on a local disk. This only changes how steps are *read*; saves keep
# orbax's default protocol.
_FINALIZED = ocp.options.AtomicityOptions(
  mode=ocp.options.AtomicityMode.COMMIT_FILE
)


def _is_finalized(step_dir: epath.Path) -> bool:
  return ocp.path.step.is_path_finalized(step_dir, atomicity_options=_FINALIZED)


# Where orbax's CPU goes per save, measured on the default config's run state
# (64 arrays, 4.9 MB, 2-core CPU; `python -m lopt.bench` case `checkpoint`):
# it is per array, not per byte. orbax costs about 1.5 ms of CPU for every
# array it writes (param infos, a TensorStore spec and open, a transaction,
# asyncio bookkeeping) plus about 30 ms per save, while 4.9 MB of zstd costs
# under 10 ms. Two per-array costs are options, and both are off here:
#
# - the `_sharding` file, one small JSON write per array: it only serves a
#   restore *without* target shardings, and `Checkpointer.restore` and
#   `load_meta` always pass targets that carry shardings;
# - zstd compression: the state is float32 parameters, moments and noise,
#   which compress by under 10 %.
#
# Kept: OCDBT (without it every array is its own set of files, which costs
# more CPU, not less) and orbax's per-array metadata store, which records the
# key implementation of typed PRNG keys, so that they restore as typed keys.


@functools.cache
def _type_handler_registry() -> ocp.type_handlers.TypeHandlerRegistry:
  # orbax's standard registry, but jax.Arrays are written without the
  # per-array sharding file (see above). The array metadata store is the one
  # orbax uses by default; V0 does not export it, V1's options do.
  array_handler = ocp.type_handlers.ArrayHandler(
    enable_write_sharding_file=False,
    array_metadata_store=ocp_v1_options.ArrayOptions.Saving().array_metadata_store,
  )
  handlers = [
    (ty, ocp.type_handlers.get_type_handler(ty))
    for ty in ocp.type_handlers.supported_types()
    if ty is not jax.Array
  ]
  return ocp.type_handlers.create_type_handler_registry(
    *handlers, (jax.Array, array_handler)
  )


def _item_handlers() -> dict[str, ocp.CheckpointHandler]:
  # Naming the handlers up front (rather than letting orbax infer them from the
  # first save/restore args) is what makes `item_metadata` work on a fresh
  # manager; without it orbax returns None for every item.
  # PyTreeCheckpointHandler rather than StandardCheckpointHandler, the same
  # format, because only it takes the options above.
  def arrays() -> ocp.PyTreeCheckpointHandler:
    return ocp.PyTreeCheckpointHandler(
      use_compression=False, type_handler_registry=_type_handler_registry()
    )

  return {
    META: arrays(),
    INNER: arrays(),
    CONFIG: ocp.JsonCheckpointHandler(),
    DIGEST: ocp.JsonCheckpointHandler(),
  }


def _manager_options(**kwargs) -> ocp.CheckpointManagerOptions:
  # The manager lists (and its save policy counts) finalized steps only.
  return ocp.CheckpointManagerOptions(
    step_name_format=ocp.path.step.standard_name_format(
      atomicity_options=_FINALIZED
    ),
    **kwargs,
  )


def _as_path(directory: str | os.PathLike[str]) -> epath.Path:
  """Returns an absolute path; URLs such as gs://... are kept as they are."""
  directory = os.fspath(directory)
  if "://" not in directory:
    # orbax requires absolute paths for local directories.
    directory = os.path.abspath(directory)
  return epath.Path(directory)


def _describe_directory(path: epath.Path) -> str:
  """Says what a directory holds, for error messages."""
  if not path.exists():
    return "the directory does not exist"
  names = sorted(p.name for p in path.iterdir())
  if not names:
    return "the directory is empty"
  found = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
  hint = ""
  if META in names:
    hint = " (this looks like one step of a checkpoint: pass its parent)"
  elif "_CHECKPOINT_METADATA" in names or "_METADATA" in names:
    hint = (
      " (an orbax checkpoint, but not one of lopt, whose checkpoint "
      f"directories hold step directories with {META!r} and {CONFIG!r})"
    )
  return f"found {found}{hint}"


def _split_run_state(run_state: Mapping[str, Any]) -> tuple[dict, PyTree]:
  if not isinstance(run_state, Mapping):
    raise ValueError(
      f"The run state must be a dict, got {type(run_state).__name__}"
    )
  if ESTIMATOR_STATE not in run_state:
    raise ValueError(
      f"The run state has no {ESTIMATOR_STATE!r} entry; its keys are "
      f"{sorted(run_state)}"
    )
  meta = {k: v for k, v in run_state.items() if k != ESTIMATOR_STATE}
  return meta, run_state[ESTIMATOR_STATE]


def _json_config(config: Any) -> dict[str, Any]:
  """Returns `config` as a plain JSON-able dict, or raises TypeError."""
  if hasattr(config, "to_dict"):  # ml_collections.ConfigDict
    config = config.to_dict()
  if not isinstance(config, Mapping):
    raise TypeError(f"config must be a dict, got {type(config).__name__}")

  def default(obj):
    # numpy / jax scalars and small arrays sneak into configs easily.
    if hasattr(obj, "tolist"):
      return obj.tolist()
    raise TypeError(
      f"config value {obj!r} of type {type(obj).__name__} is not JSON-able"
    )

  # A round trip through JSON text: fails here, in the caller's thread, rather
  # than inside orbax's async writer, and turns tuples into lists up front.
  return json.loads(json.dumps(dict(config), default=default))


def _check_against_metadata(
  prefix: str, abstract: PyTree, metadata: Any, where: str
) -> None:
  """Raises a readable ValueError if `abstract` does not fit the saved item."""
  if metadata is None:
    return  # Nothing to check against; orbax still checks while reading.
  saved = {
    digests.path_name(path): m
    for path, m in jax.tree_util.tree_flatten_with_path(
      getattr(metadata, "tree", metadata)
    )[0]
  }
  problems = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]:
    name = digests.path_name(path)
    full_name = prefix + name
    shape = tuple(leaf.shape)
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      # orbax stores (and describes) typed keys by their uint32 key data.
      shape = jax.eval_shape(jax.random.key_data, leaf).shape
    if name not in saved:
      problems.append(f"{full_name} is not in the checkpoint")
    elif tuple(saved[name].shape) != shape:
      problems.append(
        f"{full_name} has shape {tuple(saved[name].shape)} in the "
        f"checkpoint but {shape} in the run state"
      )
  if problems:
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    raise ValueError(
      f"Checkpoint {where} does not fit the run state to restore (did the "
      f"config change?): {'; '.join(problems[:5])}{more}"
    )


def _replicated_sharding() -> jax.sharding.Sharding:
  # Fully replicated over all devices of all processes: valid on one host and
  # on many, unlike a SingleDeviceSharding, which only one process can address.
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("replica",))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def _restore_targets(tree: PyTree) -> PyTree:
  """`jax.ShapeDtypeStruct` leaves with shardings, for orbax's restore.

  `ocp.utils.to_shape_dtype_struct` does the conversion of live arrays; a
  leaf without a sharding (a plain `jax.eval_shape`, a numpy array) is
  replicated over all devices.
  """
  replicated = functools.cache(_replicated_sharding)

  def leaf(x):
    if not (hasattr(x, "shape") and hasattr(x, "dtype")):
      x = np.asarray(x, dtype=jax.dtypes.canonicalize_dtype(np.result_type(x)))
    x = ocp.utils.to_shape_dtype_struct(x)
    if getattr(x, "sharding", None) is None:
      x = jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated())
    return x

  return jax.tree.map(leaf, tree)


def _array_restore(abstract: PyTree) -> ocp.args.PyTreeRestore:
  return ocp.args.PyTreeRestore(
    item=abstract,
    restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
  )


def _read_step(
  manager: ocp.CheckpointManager,
  directory: epath.Path,
  step: int,
  items: dict[str, Any],
) -> dict[str, Any]:
  """Restores `items` of `step`, plus its digest record where it has one.

  Raises:
    CorruptCheckpointError: orbax or TensorStore fails to read the step.
  """
  step_dir = directory / str(step)
  items = dict(items)
  if (step_dir / DIGEST).exists():
    items[DIGEST] = ocp.args.JsonRestore()
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**items))
  except Exception as e:  # Whatever orbax and TensorStore raise.
    raise CorruptCheckpointError(
      f"Checkpoint {step_dir} is corrupted: it cannot be read ({digests.short_error(e)})"
    ) from e
  return {name: restored[name] for name in items}


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


class Checkpointer:
  """Saves and restores the run state of meta-training.

  A thin policy layer over `ocp.CheckpointManager`: call `save` every step and
  the manager decides (every `every_steps` steps, on preemption, and always
  the first call of a fresh run: orbax's InitialSavePolicy); keeps the newest
  `keep` checkpoints; saves asynchronously.

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
    every_steps: int,
    keep: int,
    async_save: bool = True,
  ):
    """Opens (and creates) a checkpoint directory.

    Args:
      directory: where the step directories go; local or a URL (gs://...).
      every_steps: save every this many steps (config `checkpoint.every_steps`).
      keep: how many of the newest checkpoints to keep (`checkpoint.keep`).
      async_save: write in the background (see the class docstring); False
        writes every save before `save` returns.
    """
    if every_steps < 1:
      raise ValueError(
        f"checkpoint.every_steps must be >= 1, got {every_steps}"
      )
    if keep < 1:
      raise ValueError(f"checkpoint.keep must be >= 1, got {keep}")
    self._directory = _as_path(directory)
    self._options = _manager_options(
      save_interval_steps=every_steps,
      max_to_keep=keep,
      enable_async_checkpointing=async_save,
      create=True,
    )
    self._manager = ocp.CheckpointManager(
      self._directory, options=self._options, item_handlers=_item_handlers()
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
      if _is_finalized(self._directory / str(s))
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
      run_state: the run state dict (see the module docstring).
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
    meta, inner = _split_run_state(run_state)
    config = _json_config(config)
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
          f"{_describe_directory(self._directory)}"
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
    abstract_meta, abstract_inner = _split_run_state(
      _restore_targets(abstract_run_state)
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
    _check_against_metadata("", abstract_meta, metadata[0], where)
    _check_against_metadata(
      ESTIMATOR_STATE + ".", abstract_inner, metadata[1], where
    )
    items = {META: _array_restore(abstract_meta)}
    if stateful:
      items[INNER] = _array_restore(abstract_inner)
    restored = _read_step(self._manager, self._directory, step, items)
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
    restored = _read_step(
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
      self._directory, options=self._options, item_handlers=_item_handlers()
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


def load_meta(
  directory: str | os.PathLike[str], step: int | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
  """Loads `meta` and `config` of a checkpoint, without knowing any shape.

  For export and analysis: needs no model code, no mesh and reads no particle
  state. Shapes and dtypes come from the checkpoint's own metadata; the arrays
  land on this process's first local device. Optax states come back with
  plain containers (NamedTuples become lists or tuples).

  Args:
    directory: the checkpoint directory (the one given to `Checkpointer`).
    step: the step to load; None for the newest complete one.

  Returns:
    `(meta, config)`: the run state without `estimator_state`, and the
    config dict saved with it.

  Raises:
    FileNotFoundError: no complete checkpoint (for `step`) in `directory`.
  """
  path = _as_path(directory)
  if not path.is_dir():
    raise FileNotFoundError(
      f"No checkpoint in {path}: {_describe_directory(path)}"
    )
  options = _manager_options(
    read_only=True, save_interval_steps=0, create=False
  )
  with ocp.CheckpointManager(
    path, options=options, item_handlers=_item_handlers()
  ) as manager:
    # Read-only: no save of this process is in flight, so every step the
    # manager lists is finalized.
    if step is None:
      step = manager.latest_step()
      if step is None:
        raise FileNotFoundError(
          f"No complete checkpoint in {path}: {_describe_directory(path)}"
        )
    elif step not in manager.all_steps():
      raise FileNotFoundError(
        f"No complete checkpoint for step {step} in {path}: "
        f"{_describe_directory(path)}"
      )
    try:
      return _load_meta_step(manager, path, step)
    except CorruptCheckpointError as e:
      others = [s for s in manager.all_steps() if s != step]
      raise CorruptCheckpointError(
        f"{e}. "
        + (
          f"The other complete steps of {path}: {others}."
          if others
          else f"{path} holds no other complete step."
        )
      ) from e


def _load_meta_step(
  manager: ocp.CheckpointManager, path: epath.Path, step: int
) -> tuple[dict[str, Any], dict[str, Any]]:
  """`load_meta` of one complete step."""
  step_dir = path / str(step)
  missing = [item for item in (META, CONFIG) if not (step_dir / item).exists()]
  if missing:
    raise ValueError(
      f"{step_dir} is a checkpoint, but not one of lopt: it has "
      f"{sorted(p.name for p in step_dir.iterdir())}, not the items "
      f"{META!r} and {CONFIG!r} that lopt saves"
    )
  try:
    metadata = manager.item_metadata(step)[META]
  except Exception as e:  # Whatever orbax and TensorStore raise.
    raise CorruptCheckpointError(
      f"Checkpoint {step_dir} is corrupted: its metadata cannot be read "
      f"({digests.short_error(e)})"
    ) from e
  if metadata is None:
    raise CorruptCheckpointError(
      f"Checkpoint {step_dir} is corrupted: its {META!r} has no metadata"
    )
  metadata = getattr(metadata, "tree", metadata)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  # Typed PRNG keys show up in the metadata as their raw uint32 key data;
  # orbax still restores them as typed keys, from the key implementation it
  # stored next to the array (tested in tests/test_checkpoint.py).
  abstract = jax.tree.map(
    lambda m: jax.ShapeDtypeStruct(
      tuple(m.shape),
      jax.dtypes.canonicalize_dtype(m.dtype),
      sharding=device,
    ),
    metadata,
  )
  restored = _read_step(
    manager,
    path,
    step,
    {META: _array_restore(abstract), CONFIG: ocp.args.JsonRestore()},
  )
  record = restored.get(DIGEST)
  digests.check_config(str(step_dir), record, restored[CONFIG])
  digests.check_arrays(
    str(step_dir), record, digests.named_leaves("", restored[META])
  )
  return restored[META], restored[CONFIG]
