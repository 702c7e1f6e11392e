"""The learned optimizer shipped inside the package, as a user gets it.

`lopt.load_optimizer("generalist", num_steps=T)` needs no workdir and no
meta-training: its theta is package data, checked against the digest its
model card (docs/pretrained.md, from lopt/pretrained/generalist.json)
records. Checked here: the shipped theta is the one the card describes, it
trains a model from outside every family, the wheel carries it, and the
error for a name that is neither a workdir nor shipped names both.
"""

import json
import os
import shutil
import subprocess
import sys
import zipfile

import jax
import numpy as np
import pytest
from test_tasks import lm_task, stdlib_bytes, train_losses

import lopt
from lopt import export
from lopt.learned.config import LOptConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CARD = os.path.join(REPO, "lopt", "pretrained", "generalist.json")


def test_the_shipped_theta_is_the_one_its_card_describes():
  theta, cfg, card = export.load_shipped("generalist")
  with open(CARD) as f:
    assert (
      json.load(f)["digest"] == card["digest"] == export.theta_digest(theta)
    )
  # The card's architecture (fields added since it was written default).
  assert cfg == LOptConfig.from_dict(card["lopt"])
  assert card["num_params"] == sum(x.size for x in jax.tree.leaves(theta))
  # The card says where it came from.
  for key in ("commit", "config", "outer_steps", "train_seconds"):
    assert key in card, key


def test_a_damaged_theta_is_refused(tmp_path):
  shipped = os.path.dirname(CARD)
  for suffix in ("json", "npz"):
    shutil.copy(os.path.join(shipped, f"generalist.{suffix}"), tmp_path)
  theta, _, _ = export.load_shipped("generalist", str(tmp_path))
  arrays = dict(np.load(tmp_path / "generalist.npz"))
  name = sorted(arrays)[0]
  arrays[name] = arrays[name] + np.float32(1e-3)
  np.savez(tmp_path / "generalist.npz", **arrays)
  with pytest.raises(ValueError, match="does not match its digest"):
    export.load_shipped("generalist", str(tmp_path))


def test_the_shipped_optimizer_trains_a_transformer():
  # A model from outside every family the card lists: a causal transformer
  # on real text (the bytes of a standard-library module).
  num_steps = 150
  tx = lopt.load_optimizer("generalist", num_steps=num_steps)
  stream = stdlib_bytes(40_000)
  losses = train_losses(lm_task(batch_size=8), tx, stream, None, num_steps)
  assert np.all(np.isfinite(losses))
  assert losses[-10:].mean() < 0.7 * losses[:5].mean()


def test_a_name_that_is_neither_a_workdir_nor_shipped_names_both():
  with pytest.raises(FileNotFoundError, match="generalist"):
    lopt.load_optimizer("generalst", num_steps=10)
  with pytest.raises(ValueError, match="one theta"):
    lopt.load_optimizer("generalist", num_steps=10, step=3)


@pytest.mark.slow  # builds a wheel
def test_the_wheel_carries_the_shipped_optimizer(tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "pip",
      "wheel",
      "--no-deps",
      "-q",
      "-w",
      str(tmp_path),
      REPO,
    ],
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  (wheel,) = tmp_path.glob("lopt-*.whl")
  names = zipfile.ZipFile(wheel).namelist()
  assert "lopt/pretrained/generalist.npz" in names
  assert "lopt/pretrained/generalist.json" in names
