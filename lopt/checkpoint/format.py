"""The on-disk format of a checkpoint, in orbax's terms, and reading it back.

A checkpoint directory holds one directory per saved step, named by the step
(orbax's standard step names). A step holds four items
(`ocp.args.Composite`):

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
  checked on every read (`lopt.checkpoint.digests`).

A step is a checkpoint only once complete, i.e. finalized by orbax's commit
file (`is_finalized`): a save that was interrupted or is still in flight,
or a partial copy, is never read. A corrupted step that was set aside is
renamed to `<step>.corrupted`, no step name to orbax.

The handlers and options below fix this format: they are chosen for orbax's
cost per array (see the note above `_type_handler_registry`), and every
reader passes them, so that orbax never has to infer a format from the
files. Reading is here too: the restore targets, one step's items
(`read_step`, which turns any orbax or TensorStore failure into
`CorruptCheckpointError`), and `load_meta`, which needs no `Checkpointer`
(and so no save policy) at all.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint.experimental.v1 import options as ocp_v1_options

from lopt.checkpoint import digests
from lopt.checkpoint.digests import CorruptCheckpointError

PyTree = Any

#: The run state's entry that is saved as the `inner` item.
ESTIMATOR_STATE = "estimator_state"
#: The items of a step (see the module docstring).
META = "meta"
INNER = "inner"
CONFIG = "config"
DIGEST = "digest"
#: Suffix of a corrupted step's directory once it is set aside: not a step
#: name to orbax (which reads `<int>` and `<prefix>_<int>` only).
CORRUPTED_SUFFIX = ".corrupted"


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


def is_finalized(step_dir: epath.Path) -> bool:
  """Whether `step_dir` is a complete step: orbax wrote its commit file."""
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


def item_handlers() -> dict[str, ocp.CheckpointHandler]:
  """The handler of each item, for every `ocp.CheckpointManager` of lopt."""

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


def manager_options(**kwargs) -> ocp.CheckpointManagerOptions:
  """`ocp.CheckpointManagerOptions(**kwargs)` that see complete steps only."""
  # The manager lists (and its save policy counts) finalized steps only.
  return ocp.CheckpointManagerOptions(
    step_name_format=ocp.path.step.standard_name_format(
      atomicity_options=_FINALIZED
    ),
    **kwargs,
  )


def as_path(directory: str | os.PathLike[str]) -> epath.Path:
  """Returns an absolute path; URLs such as gs://... are kept as they are."""
  directory = os.fspath(directory)
  if "://" not in directory:
    # orbax requires absolute paths for local directories.
    directory = os.path.abspath(directory)
  return epath.Path(directory)


def describe_directory(path: epath.Path) -> str:
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


def split_run_state(run_state: Mapping[str, Any]) -> tuple[dict, PyTree]:
  """Splits the run state into its `meta` and `inner` items, or raises."""
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


def json_config(config: Any) -> dict[str, Any]:
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


def check_against_metadata(
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


def restore_targets(tree: PyTree) -> PyTree:
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


def array_restore(abstract: PyTree) -> ocp.args.PyTreeRestore:
  """orbax's restore args of an array item, from `restore_targets` leaves."""
  return ocp.args.PyTreeRestore(
    item=abstract,
    restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
  )


def read_step(
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
  path = as_path(directory)
  if not path.is_dir():
    raise FileNotFoundError(
      f"No checkpoint in {path}: {describe_directory(path)}"
    )
  options = manager_options(read_only=True, save_interval_steps=0, create=False)
  with ocp.CheckpointManager(
    path, options=options, item_handlers=item_handlers()
  ) as manager:
    # Read-only: no save of this process is in flight, so every step the
    # manager lists is finalized.
    if step is None:
      step = manager.latest_step()
      if step is None:
        raise FileNotFoundError(
          f"No complete checkpoint in {path}: {describe_directory(path)}"
        )
    elif step not in manager.all_steps():
      raise FileNotFoundError(
        f"No complete checkpoint for step {step} in {path}: "
        f"{describe_directory(path)}"
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
  restored = read_step(
    manager,
    path,
    step,
    {META: array_restore(abstract), CONFIG: ocp.args.JsonRestore()},
  )
  record = restored.get(DIGEST)
  digests.check_config(str(step_dir), record, restored[CONFIG])
  digests.check_arrays(
    str(step_dir), record, digests.named_leaves("", restored[META])
  )
  return restored[META], restored[CONFIG]
