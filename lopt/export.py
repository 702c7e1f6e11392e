"""Load a meta-trained learned optimizer as an `optax.GradientTransformation`.

    tx = lopt.load_optimizer("/tmp/lopt", num_steps=1000)    # a workdir
    tx = lopt.load_optimizer("generalist", num_steps=1000)   # shipped
    opt_state = tx.init(params)
    updates, opt_state = tx.update(grads, opt_state, params)

The checkpoint's JSON item holds the learned optimizer's architecture, so
loading needs neither the config file nor the training stack; only theta is
read, not the particles' states. The transformation is the very function
that meta-training ran, so the loaded optimizer behaves bit for bit as it
did there.

Optimizers shipped inside the package (`SHIPPED`) are a few kilobytes of
package data each: `lopt/pretrained/<name>.npz` holds theta, and
`<name>.json` its architecture, a SHA-256 digest of theta's bytes (checked
on every load) and where it came from (config, outer steps, commit); their
model cards are docs/pretrained.md. `write_shipped` makes both files from a
checkpoint.
"""

import hashlib
import importlib.resources
import io
import json
import os
import pathlib
from typing import Any

import jax
import numpy as np
import optax

from lopt import checkpoint
from lopt.learned import optimizers
from lopt.learned.config import LOptConfig

#: The optimizers shipped in the package, by the name `load_optimizer` takes.
SHIPPED = ("generalist",)
_PRETRAINED = "pretrained"


def _checkpoint_dir(path: str) -> str:
  nested = os.path.join(path, "checkpoints")
  return nested if os.path.isdir(nested) else path


def load_theta(path: str, step: int | None = None):
  """Returns (theta, LOptConfig, saved JSON) from a workdir or checkpoint dir.

  The saved JSON holds `config` (the run's resolved config), `lopt` (the
  architecture) and `horizon` (the inner horizon it was meta-trained on).

  Raises:
    FileNotFoundError: if `path` holds no complete checkpoint.
    ValueError: if the checkpoint is not a lopt learned optimizer, or its
      theta does not match its recorded architecture.
  """
  meta, saved = checkpoint.load_meta(_checkpoint_dir(path), step)
  if "lopt" not in saved or "theta" not in meta:
    raise ValueError(
      f"{path} holds a checkpoint, but not of a lopt learned optimizer: "
      f"its config has keys {sorted(saved)} and its state {sorted(meta)}."
    )
  cfg = LOptConfig.from_dict(saved["lopt"])
  theta = jax.tree.map(jax.numpy.asarray, meta["theta"])
  try:  # learned_optimizer checks that theta's shapes fit the architecture
    optimizers.learned_optimizer(theta, cfg, saved.get("horizon", 1))
  except ValueError as e:
    raise ValueError(
      f"The checkpoint in {path} does not fit its recorded "
      f"architecture {cfg}: {e}"
    ) from e
  return theta, cfg, saved


def is_shipped(path: str) -> bool:
  """Whether `path` names a shipped optimizer (and no file or directory)."""
  return path in SHIPPED and not os.path.exists(path)


def theta_digest(theta) -> str:
  """SHA-256 of theta's leaves (float32 bytes, in tree order)."""
  sha = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(theta)[0]:
    sha.update(jax.tree_util.keystr(path).encode())
    sha.update(np.asarray(leaf, np.float32).tobytes())
  return sha.hexdigest()


def _flat(theta) -> dict[str, np.ndarray]:
  return {
    jax.tree_util.keystr(path, simple=True, separator="/"): np.asarray(leaf)
    for path, leaf in jax.tree_util.tree_flatten_with_path(theta)[0]
  }


def _unflat(arrays) -> dict[str, Any]:
  theta: dict[str, Any] = {}
  for name, value in arrays.items():
    *parents, leaf = name.split("/")
    node = theta
    for parent in parents:
      node = node.setdefault(parent, {})
    node[leaf] = jax.numpy.asarray(value)
  return theta


def write_shipped(
  name: str, workdir: str, directory: str, step: int | None = None, **about
) -> dict[str, Any]:
  """Writes `<name>.npz` and `<name>.json` of a checkpoint into `directory`.

  Args:
    name: the name `load_optimizer` will take.
    workdir: the meta-training workdir (or checkpoint directory).
    directory: where to write (the package's `lopt/pretrained`).
    step: which checkpoint; the newest by default.
    **about: more facts for the JSON (commit, wall-clock, ...).

  Returns:
    The JSON written.
  """
  theta, cfg, saved = load_theta(workdir, step)
  buffer = io.BytesIO()
  np.savez(buffer, **_flat(theta))
  card = {
    "name": name,
    "lopt": cfg.to_dict(),
    "horizon": saved.get("horizon"),
    "digest": theta_digest(theta),
    "num_params": int(sum(x.size for x in jax.tree.leaves(theta))),
    "config": saved["config"],
    **about,
  }
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, f"{name}.npz"), "wb") as f:
    f.write(buffer.getvalue())
  with open(os.path.join(directory, f"{name}.json"), "w") as f:
    json.dump(card, f, indent=1, sort_keys=True)
    f.write("\n")
  return card


def load_shipped(name: str, directory: str | None = None):
  """Returns (theta, LOptConfig, card JSON) of a shipped optimizer.

  Args:
    name: a name of `SHIPPED`.
    directory: where its two files are; by default the package's own.

  Raises:
    ValueError: `name` is not shipped, or its theta does not match the
      digest recorded beside it (a damaged installation).
  """
  if name not in SHIPPED:
    raise ValueError(
      f"No shipped optimizer {name!r}; shipped: {list(SHIPPED)}."
    )
  files = (
    importlib.resources.files("lopt").joinpath(_PRETRAINED)
    if directory is None
    else pathlib.Path(directory)
  )
  card = json.loads(files.joinpath(f"{name}.json").read_text())
  with files.joinpath(f"{name}.npz").open("rb") as f:
    theta = _unflat(dict(np.load(io.BytesIO(f.read()))))
  if theta_digest(theta) != card["digest"]:
    raise ValueError(
      f"The shipped optimizer {name!r} does not match its digest "
      f"{card['digest'][:12]}...: reinstall lopt."
    )
  return theta, LOptConfig.from_dict(card["lopt"]), card


def load_optimizer(
  path: str, num_steps: int | None = None, step: int | None = None
) -> optax.GradientTransformation:
  """Loads a trained learned optimizer as an optax transformation.

  Args:
    path: a meta-training workdir or its `checkpoints` directory, or the
      name of an optimizer shipped with lopt (`SHIPPED`: "generalist").
    num_steps: the length of the training run it will drive. Defaults to the
      inner horizon it was meta-trained on; its learning-rate schedule and
      progress features are relative to this.
    step: which checkpoint; the newest complete one by default.

  Returns:
    An `optax.GradientTransformation` whose `update(grads, state, params)`
    needs `params`. It works on any parameter pytree (Flax linen, Flax NNX
    via `nnx.Optimizer(model, tx, wrt=nnx.Param)`, plain dicts).
  """
  if is_shipped(path):
    if step is not None:
      raise ValueError(f"A shipped optimizer has one theta; got step={step}.")
    theta, cfg, saved = load_shipped(path)
  else:
    try:
      theta, cfg, saved = load_theta(path, step)
    except FileNotFoundError as e:
      if os.path.exists(path):
        raise
      raise FileNotFoundError(
        f"{e} Nor is {path!r} an optimizer shipped with lopt "
        f"({', '.join(SHIPPED)})."
      ) from None
  return optimizers.learned_optimizer(
    theta, cfg, num_steps or saved.get("horizon")
  )
