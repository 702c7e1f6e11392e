"""Content digests of a checkpoint: a garbled byte is never restored silently.

orbax and TensorStore notice a truncated file and damage to their JSON
metadata and OCDBT index (whose nodes carry checksums), but not damage to
array bytes: chunks are stored raw (no compression, see below), so a
garbled byte of the particles' data file restores as a different number,
without an error (measured on configs/tiny.py). Every save therefore records
a digest of every array, and every restore recomputes it.

The digest of an array is the sum, modulo 2**32, of a hash of each 32-bit
word of its data together with the word's global position. A sum does not
depend on how the array is split into shards, so a checkpoint written on 8
devices verifies on 1. One changed word always changes the digest (for a
fixed position the hash is a bijection of the word); other damage goes
unnoticed with probability 2**-32.

The digests of all of a tree's arrays are one jitted program on the arrays'
own devices: each device hashes its shards and XLA sums across devices and
processes. `start` only dispatches it, so a save can hash its state while the
next training step is already queued. Cost: about 2 ms per save of the
default config's 4.9 MB on a 2-core CPU (hashing those words on the host in
NumPy, as lopt did before, took 20-25 ms of the training loop's thread).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import multihost_utils

PyTree = Any


class CorruptCheckpointError(OSError):
  """A complete checkpoint step that cannot be read back as it was saved.

  Its files were truncated or garbled after the save committed: orbax or
  TensorStore fails to read them, or what they read differs from the digests
  recorded at save time. Not raised for a checkpoint that is merely missing
  (`FileNotFoundError`) or that does not fit the run state (`ValueError`).
  """


def _fmix32(h: jax.Array) -> jax.Array:
  """MurmurHash3's finalizer: a bijection of uint32 with good avalanche."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _words(x: jax.Array) -> jax.Array:
  """The bits of `x` as a flat uint32 vector: elements in row-major order, an
  element of 8 bytes as its two words in memory order, a narrower one as one
  zero-extended word; a typed PRNG key array as its key data."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  size = x.dtype.itemsize
  if size < 4:  # (b)float16, int8, ...
    x = lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * size}"))
    return x.astype(jnp.uint32).reshape(-1)
  return lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)


def _digest(x: jax.Array) -> jax.Array:
  words = _words(x)
  # Positions wrap modulo 2**32, like everything else here.
  position = lax.iota(jnp.uint32, words.size)
  hashed = _fmix32(words ^ _fmix32(position + jnp.uint32(0x9E3779B9)))
  return jnp.sum(hashed, dtype=jnp.uint32)


@jax.jit
def _digests(arrays: list[jax.Array]) -> jax.Array:
  return jnp.stack([_digest(x) for x in arrays])


def _is_array(x: Any) -> bool:
  # Python scalars are left out: their restored dtype is not theirs.
  return isinstance(x, np.ndarray | jax.Array)


def path_name(path: tuple) -> str:
  """'theta.dense.kernel', 'estimator_state.0.mu.w': a leaf's dotted name.

  The same for a NamedTuple field and the dict key that orbax's metadata
  shows in its place.
  """
  return jax.tree_util.keystr(path, simple=True, separator=".")


def named_leaves(prefix: str, tree: PyTree) -> list[tuple[str, Any]]:
  """The leaves of `tree` with their dotted names, each after `prefix`."""
  return [
    (prefix + path_name(path), leaf)
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
  ]


def start(named_leaves: list[tuple[str, Any]]) -> Callable[[], dict]:
  """Dispatches the digests of the array leaves, without waiting for them.

  Collective when an array spans several processes: every process must call
  it alike.

  Args:
    named_leaves: `(name, leaf)` pairs, as `named_leaves` makes them.

  Returns:
    A function that waits for the digests and returns `{name: [dtype,
    digest]}` of the array leaves.
  """
  arrays = [(n, x) for n, x in named_leaves if _is_array(x)]
  if not arrays:
    return dict
  values = _digests([x for _, x in arrays])

  def result() -> dict[str, list]:
    got = values
    if not (got.is_fully_addressable or got.is_fully_replicated):
      got = multihost_utils.process_allgather(got, tiled=True)
    return {
      name: [str(x.dtype), int(d)]
      for (name, x), d in zip(arrays, np.asarray(got), strict=True)
    }

  return result


def array_digests(named_leaves: list[tuple[str, Any]]) -> dict[str, list]:
  """`{name: [dtype, digest]}` of the array leaves (see `start`)."""
  return start(named_leaves)()


def config_digest(config: Mapping[str, Any]) -> str:
  text = json.dumps(config, sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(text.encode()).hexdigest()


def record(arrays: dict[str, list], config: dict) -> dict:
  """The JSON saved beside a checkpoint: the digests of its arrays (what
  `start` returns) and of its config."""
  return {"version": 1, "config": config_digest(config), "arrays": arrays}


def short_error(error: BaseException, limit: int = 300) -> str:
  """An exception in one line: TensorStore errors come with pages of spec."""
  text = " ".join(str(error).split()) or type(error).__name__
  if len(text) > limit:
    text = text[:limit] + " ..."
  return f"{type(error).__name__}: {text}"


def check_arrays(where: str, record: dict | None, named_leaves) -> None:
  """Raises CorruptCheckpointError if the leaves differ from `record`."""
  if record is None:
    return  # Written before lopt recorded digests: nothing to check.
  saved = record.get("arrays", {})
  # Only what was recorded, and only under its saved dtype (a restore into
  # another dtype converts, and then hashes other bits).
  named_leaves = [
    (n, x)
    for n, x in named_leaves
    if n in saved and str(getattr(x, "dtype", None)) == saved[n][0]
  ]
  got = array_digests(named_leaves)
  bad = [n for n, (_, d) in got.items() if saved[n][1] != d]
  if bad:
    more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
    raise CorruptCheckpointError(
      f"Checkpoint {where} is corrupted: {len(bad)} of {len(got)} arrays "
      f"read back differ from what was saved ({', '.join(bad[:5])}{more})"
    )


def check_config(where: str, record: dict | None, config) -> None:
  if record is not None and record.get("config") != config_digest(config):
    raise CorruptCheckpointError(
      f"Checkpoint {where} is corrupted: its config JSON differs from the "
      "one saved"
    )
