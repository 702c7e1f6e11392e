"""A corrupted checkpoint is never restored: the newest intact one is, or an
error names every damaged step.

"Corrupted" means a complete step (its commit file is there) whose files
were truncated or garbled afterwards. The damage here is done to real orbax
checkpoints on disk, byte by byte: a flipped byte inside an array's stored
data (which orbax and TensorStore read back without an error: only lopt's
digests notice it), truncated or garbled index, metadata and JSON files. The
last two tests run `lopt.main` on a damaged copy of the session's tiny run.
"""

import json
import logging
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_checkpoint import CONFIG, assert_identical, make_run_state
from test_train import restore_final, run_main

from configs import tiny
from lopt import checkpoint
from lopt.checkpoint import digests
from lopt.checkpoint import format as ckpt_format

CorruptCheckpointError = checkpoint.CorruptCheckpointError


def run_state(seed: int) -> dict:
  """make_run_state, with one theta leaf and one particle leaf large enough
  (over 1 KiB) to be stored as raw bytes in a data file, not inside
  TensorStore's (checksummed) index nodes."""
  state = make_run_state(seed=seed)
  rng = np.random.default_rng(100 + seed)
  big = rng.standard_normal(2048).astype(np.float32)
  noise = rng.standard_normal((8, 512)).astype(np.float32)
  state["theta"] = dict(state["theta"], big=jnp.asarray(big))
  state["estimator_state"] = state["estimator_state"]._replace(
    noise=jnp.asarray(noise)
  )
  return state


@pytest.fixture
def saved(tmp_path):
  """A checkpoint directory with intact steps 1 and 2 (different states)."""
  directory = tmp_path / "ckpt"
  states = {1: run_state(1), 2: run_state(2)}
  with checkpoint.Checkpointer(directory, every_steps=1, keep=5) as ckpt:
    for step, state in states.items():
      assert ckpt.save(step, state, {**CONFIG, "seed": step})
  return directory, states


def files(directory) -> list[str]:
  return sorted(
    os.path.relpath(os.path.join(d, f), directory)
    for d, _, names in os.walk(directory)
    for f in names
  )


def flip_byte_of_array(step_dir, item: str, values: np.ndarray) -> str:
  """Flips one bit in the stored bytes of `values` under `step_dir/item`.

  Returns:
    The damaged file. The array is found by its bytes (chunks are stored
    uncompressed), so exactly one value changes.
  """
  needle = np.asarray(values).tobytes()
  found = []
  for name in files(step_dir / item):
    path = step_dir / item / name
    data = bytearray(path.read_bytes())
    at = data.find(needle)
    if at >= 0:
      data[at + len(needle) // 2] ^= 0x10
      path.write_bytes(bytes(data))
      found.append(name)
  assert len(found) == 1, f"{values.shape} array stored in {found}"
  return found[0]


def truncate(path) -> None:
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])


def garble(path) -> None:
  data = bytearray(path.read_bytes())
  middle = len(data) // 2
  for i in range(middle, min(len(data), middle + 8)):
    data[i] ^= 0x5A
  path.write_bytes(bytes(data))


def largest(directory):
  return max(
    (directory / name for name in files(directory)),
    key=lambda p: p.stat().st_size,
  )


def read_both(ckpt, target):
  """What lopt.train reads of a step: its config, then its arrays."""

  def read(step):
    ckpt.restore_config(step)
    return ckpt.restore(step, target)

  return read


@pytest.mark.parametrize(
  "item,leaf", [("meta", "theta.big"), ("inner", "estimator_state.noise")]
)
def test_a_garbled_array_is_detected_and_the_newest_intact_step_restored(
  saved, item, leaf, caplog
):
  directory, states = saved
  values = (
    states[2]["theta"]["big"]
    if item == "meta"
    else states[2]["estimator_state"].noise
  )
  flip_byte_of_array(directory / "2", item, values)
  target = run_state(0)
  with checkpoint.Checkpointer(directory, every_steps=1, keep=5) as ckpt:
    # Read on its own, step 2 fails, naming itself and the damaged array.
    with pytest.raises(CorruptCheckpointError, match=re.escape(leaf)) as info:
      ckpt.restore(2, target)
    assert str(directory / "2") in str(info.value)
    # Found by lopt's digests: orbax and TensorStore read it back happily.
    assert "read back differ from what was saved" in str(info.value)
    with caplog.at_level(logging.WARNING):
      step, state = ckpt.restore_newest_intact(
        lambda s: ckpt.restore(s, target)
      )
    assert step == 1
    assert_identical(state, states[1])
    # The damaged step is moved aside, named in the warning ...
    warning = caplog.text
    assert "newest intact checkpoint" in warning
    assert str(directory / f"2{ckpt_format.CORRUPTED_SUFFIX}") in warning
    assert sorted(os.listdir(directory)) == ["1", "2.corrupted"]
    assert ckpt.all_steps() == [1]
    # ... so that the run saves step 2 anew when it gets there.
    assert ckpt.save(2, states[2], CONFIG)
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [1, 2]
    assert_identical(ckpt.restore(2, target), states[2])


# orbax leaves an unawaited read coroutine behind when TensorStore fails on a
# damaged file; what matters here is the error it raises.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize(
  "damage,where",
  [
    (truncate, "inner/ocdbt.process_0/d"),  # the particles' largest file
    (garble, "inner/ocdbt.process_0/d"),
    (truncate, "meta/manifest.ocdbt"),
    (garble, "meta/manifest.ocdbt"),
    (truncate, "inner/_METADATA"),
    (garble, "meta/array_metadatas/process_0"),
    (truncate, "config/metadata"),
    (garble, "config/metadata"),
    (truncate, "digest/metadata"),
    (garble, "digest/metadata"),
  ],
)
def test_damaged_files_fall_back_to_the_newest_intact_step(
  saved, damage, where
):
  directory, states = saved
  path = directory / "2" / where
  damage(largest(path) if path.is_dir() else path)
  target = run_state(0)
  with checkpoint.Checkpointer(directory, every_steps=1, keep=5) as ckpt:
    step, state = ckpt.restore_newest_intact(read_both(ckpt, target))
  assert step == 1
  assert_identical(state, states[1])


def test_a_hand_edited_config_is_corrupted_not_a_config_change(saved):
  directory, _ = saved
  path = directory / "2" / "config" / "metadata"
  config = json.loads(path.read_text())
  config["seed"] += 1  # Valid JSON, plausible value: still not what was saved.
  path.write_text(json.dumps(config))
  with checkpoint.Checkpointer(directory, every_steps=1, keep=5) as ckpt:
    with pytest.raises(CorruptCheckpointError, match="config JSON"):
      ckpt.restore_config(2)
    assert ckpt.restore_config(1)["seed"] == 1


def test_no_intact_step_fails_naming_each_and_moves_nothing(saved):
  directory, states = saved
  flip_byte_of_array(
    directory / "1", "inner", states[1]["estimator_state"].noise
  )
  truncate(largest(directory / "2" / "meta"))
  before = files(directory)
  target = run_state(0)
  with checkpoint.Checkpointer(directory, every_steps=1, keep=5) as ckpt:
    with pytest.raises(CorruptCheckpointError) as info:
      ckpt.restore_newest_intact(read_both(ckpt, target))
  message = str(info.value)
  assert message.startswith(f"No intact checkpoint in {directory}")
  assert str(directory / "1") in message and str(directory / "2") in message
  assert "estimator_state.noise" in message
  assert "Nothing was changed" in message
  assert files(directory) == before


def test_load_meta_names_the_corrupted_step_and_the_intact_ones(saved):
  directory, states = saved
  flip_byte_of_array(directory / "2", "meta", states[2]["theta"]["big"])
  with pytest.raises(CorruptCheckpointError) as info:
    checkpoint.load_meta(directory)
  message = str(info.value)
  assert str(directory / "2") in message and "theta.big" in message
  assert f"The other complete steps of {directory}: [1]" in message
  # Only the particles' state damaged: export does not read it.
  meta, config = checkpoint.load_meta(directory, step=1)
  assert config["seed"] == 1
  assert_identical(meta["theta"], states[1]["theta"])


def test_set_aside_twice_keeps_both_copies(saved):
  directory, states = saved
  target = run_state(0)
  with checkpoint.Checkpointer(directory, every_steps=1, keep=5) as ckpt:
    ckpt.set_aside(2)
    assert ckpt.save(2, states[2], CONFIG)
    ckpt.wait_until_finished()
    moved = ckpt.set_aside(2)
    assert moved == directory / "2.corrupted-2"
    assert ckpt.all_steps() == [1]
    assert_identical(ckpt.restore(None, target), states[1])
  assert sorted(os.listdir(directory)) == ["1", "2.corrupted", "2.corrupted-2"]


def test_a_checkpoint_without_digests_still_restores(saved):
  """Checkpoints written before lopt recorded digests are not refused."""
  directory, states = saved
  shutil.rmtree(directory / "2" / ckpt_format.DIGEST)
  with checkpoint.Checkpointer(directory, every_steps=1, keep=5) as ckpt:
    assert_identical(ckpt.restore(2, run_state(0)), states[2])
  meta, _ = checkpoint.load_meta(directory)
  assert_identical(meta["theta"], states[2]["theta"])


def digest(x) -> int:
  return digests.array_digests([("x", x)])["x"][1]


def test_digests_are_those_earlier_checkpoints_recorded():
  """The digest format is pinned: checkpoints written since lopt recorded
  digests (hashed on the host in NumPy then) must still verify."""
  arrays = {
    "f32": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
    "bf16": jnp.linspace(-1, 1, 10, dtype=jnp.bfloat16),
    "bool": np.array([True, False, True]),
    "i32": np.arange(-3, 5, dtype=np.int32),
    "key": jax.random.split(jax.random.key(7), 3),
    "scalar": 3.0,  # not an array: not recorded
  }
  assert digests.array_digests(list(arrays.items())) == {
    "f32": ["float32", 1639459570],
    "bf16": ["bfloat16", 2237043947],
    "bool": ["bool", 3988684711],
    "i32": ["int32", 876106037],
    "key": ["key<fry>", 2644956795],
  }


def test_digests_see_every_word_and_its_position():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((6, 5)).astype(np.float32)
  whole = digest(x)
  assert digest(jnp.asarray(x)) == whole  # a host or a device array alike
  bits = x.view(np.uint32)
  flipped = []
  for i in np.ndindex(x.shape):  # Every bit of every element counts.
    for bit in (0, 31):
      y = bits.copy()
      y[i] ^= np.uint32(1 << bit)
      flipped.append((str(len(flipped)), y))
  assert whole not in {d for _, d in digests.array_digests(flipped).values()}
  swapped = x.copy()
  swapped[[0, 1]] = swapped[[1, 0]]
  assert digest(swapped) != whole
  keys = jax.random.split(jax.random.key(0), 3)
  assert digest(keys) == digest(jax.random.key_data(keys))


# -- lopt.main on a damaged copy of a real run ---------------------------------


def copy_of(tiny_run, tmp_path):
  workdir = tmp_path / "copy"
  shutil.copytree(tiny_run.workdir / "checkpoints", workdir / "checkpoints")
  shutil.copy(tiny_run.workdir / "metrics.jsonl", workdir)
  assert sorted(os.listdir(workdir / "checkpoints")) == ["1", "2"]
  return workdir


def particles_file(step_dir):
  """The largest file of the particles' state: raw float data."""
  return largest(step_dir / "inner" / "ocdbt.process_0" / "d")


@pytest.mark.slow
def test_main_resumes_from_the_newest_intact_checkpoint(tiny_run, tmp_path):
  workdir = copy_of(tiny_run, tmp_path)
  garble(particles_file(workdir / "checkpoints" / "2"))
  result = run_main(workdir, f"--config.outer.num_steps={tiny_run.num_steps}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Resuming from step 1, the newest intact checkpoint" in result.stderr
  assert "Resuming from the checkpoint of step 1 in" in result.stderr
  assert sorted(os.listdir(workdir / "checkpoints")) == [
    "1",
    "2",
    "2.corrupted",
  ]
  # Step 2 done again from step 1 is the step 2 the damage destroyed.
  config = tiny.get_config()
  config.outer.num_steps = tiny_run.num_steps
  redone = restore_final(workdir, config)
  original = restore_final(tiny_run.workdir, config)
  assert int(redone["step"]) == 2
  jax.tree.map(np.testing.assert_array_equal, redone, original)


@pytest.mark.slow
def test_main_refuses_when_no_checkpoint_is_intact(tiny_run, tmp_path):
  workdir = copy_of(tiny_run, tmp_path)
  for step in ("1", "2"):
    garble(particles_file(workdir / "checkpoints" / step))
  before = files(workdir / "checkpoints")
  result = run_main(workdir, f"--config.outer.num_steps={tiny_run.num_steps}")
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert "No intact checkpoint in" in last, result.stderr[-3000:]
  for step in ("1", "2"):
    assert str(workdir / "checkpoints" / step) + " is corrupted" in last
  assert "Starting from scratch" not in result.stderr
  assert files(workdir / "checkpoints") == before
