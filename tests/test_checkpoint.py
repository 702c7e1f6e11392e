"""Tests for lopt.checkpoint: round trip, policy, atomicity, elastic resume."""

import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import tensorstore as ts

from lopt import checkpoint
from lopt.checkpoint import format as ckpt_format

REPO = pathlib.Path(__file__).resolve().parents[1]


class EstimatorState(NamedTuple):
  """Stands in for an estimator state: every leaf has a particle axis."""

  inner_params: dict
  inner_step: jax.Array
  noise: jax.Array
  key: jax.Array


def make_run_state(num_particles: int = 8, seed: int = 0) -> dict:
  """A small but realistic run state, non-trivial in every leaf."""
  # Built from numpy rather than with jax ops: eager jax ops compile one by
  # one, which costs seconds on a small CPU machine.
  rng = np.random.default_rng(seed)

  def normal(*shape, dtype=np.float32):
    return jnp.asarray(rng.standard_normal(shape).astype(dtype))

  def keys(*shape):
    data = rng.integers(0, 2**32, (*shape, 2), dtype=np.uint32)
    return jax.random.wrap_key_data(jnp.asarray(data))

  theta = {
    "dense_0": {"kernel": normal(5, 4), "bias": normal(4)},
    "scale": jnp.asarray(np.float32(0.5)),
  }
  # The real optax structure, with moments that are not their initial zeros.
  adam_state, empty = optax.adam(1e-2).init(theta)
  adam_state = adam_state._replace(
    count=jnp.asarray(np.int32(3)),
    mu=jax.tree.map(lambda x: normal(*x.shape), theta),
    nu=jax.tree.map(lambda x: jnp.abs(normal(*x.shape)), theta),
  )
  estimator_state = EstimatorState(
    inner_params={
      "w": normal(num_particles, 3, 2),
      "b": normal(num_particles, 2, dtype=jnp.bfloat16),
    },
    inner_step=jnp.asarray(np.arange(num_particles, dtype=np.int32)),
    noise=normal(num_particles, 7),
    key=keys(num_particles),
  )
  return {
    "step": jnp.asarray(np.int32(7)),
    "theta": theta,
    "outer_opt_state": (adam_state, empty),
    "estimator_state": estimator_state,
    "rng": keys(),
  }


CONFIG = {
  "seed": 0,
  "lopt": {"hidden": (32, 32)},
  "estimator": {"name": "nres"},
}


def _bits(x) -> tuple:
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    return ("key", str(jax.random.key_impl(x)), _bits(jax.random.key_data(x)))
  x = np.asarray(x)
  return (x.dtype, x.shape, x.tobytes())


def assert_identical(a, b):
  """Same tree structure (incl. NamedTuple types), dtypes and bits."""
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b, strict=True):
    assert x.dtype == y.dtype
    assert _bits(x) == _bits(y)


def test_round_trip_is_bit_exact(tmp_path):
  state = make_run_state()
  with checkpoint.Checkpointer(
    tmp_path / "ckpt", every_steps=1, keep=2
  ) as ckpt:
    assert ckpt.save(7, state, CONFIG)
    ckpt.wait_until_finished()
    assert ckpt.latest_step() == 7
    # Live arrays as targets: their shardings are used.
    restored = ckpt.restore(7, state)
    # A target from jax.eval_shape (no shardings): leaves get replicated.
    from_shapes = ckpt.restore(None, jax.eval_shape(lambda: state))
    # lopt.train reads the saved config before any array, to check a resume.
    saved_config = ckpt.restore_config(7)
  assert checkpoint.load_meta(tmp_path / "ckpt", 7)[1] == saved_config
  assert_identical(restored, state)
  assert_identical(from_shapes, state)
  # The per-array costs lopt.checkpoint turns off (see there): no sharding
  # file per array (restores always pass target shardings) and no zstd.
  step_dir = tmp_path / "ckpt" / "7"
  assert not list(step_dir.glob("*/_sharding"))
  noise = ts.open(
    {
      "driver": "zarr",
      "kvstore": {
        "driver": "ocdbt",
        "base": f"file://{step_dir / 'inner'}",
        "path": "noise",
      },
    }
  ).result()
  assert noise.spec().to_json()["metadata"]["compressor"] is None
  assert isinstance(restored["outer_opt_state"][0], optax.ScaleByAdamState)
  assert isinstance(restored["estimator_state"], EstimatorState)
  assert restored["rng"].dtype == jax.random.key(0).dtype
  # JSON has no tuples.
  assert saved_config["lopt"]["hidden"] == [32, 32]
  assert saved_config["estimator"] == CONFIG["estimator"]


def test_async_save_survives_donation_and_waits_for_the_next_call(tmp_path):
  """What the training loop relies on: it donates the run state to its next
  step right after `save`, and orbax starts writing only at the next call
  into the Checkpointer (after that step is queued), or at wait/close."""

  def negate(x):
    return -x if jnp.issubdtype(x.dtype, jnp.floating) else x

  step_fn = jax.jit(lambda s: jax.tree.map(negate, s), donate_argnums=0)
  first = make_run_state()
  states = [first, jax.tree.map(negate, first)]
  expected = [[_bits(x) for x in jax.tree.leaves(s)] for s in states]
  state = first
  directory = tmp_path / "ckpt"
  with checkpoint.Checkpointer(directory, every_steps=1, keep=3) as ckpt:
    assert ckpt.save(1, state, CONFIG)
    # The caller's next step takes the buffers: the save holds its own copy.
    state = step_fn(state)
    assert first["theta"]["dense_0"]["kernel"].is_deleted()
    # Nothing reached orbax yet: no step directory, not even a tmp one.
    assert not os.path.exists(directory / "1")
    assert not [p for p in os.listdir(directory) if p.startswith("1")]
    assert ckpt.save(2, state, CONFIG)  # hands step 1 to orbax first
    ckpt.wait_until_finished()  # and step 2
    assert ckpt.all_steps() == [1, 2]
    for step, want in zip((1, 2), expected, strict=True):
      restored = ckpt.restore(step, jax.eval_shape(lambda: state))
      assert [_bits(x) for x in jax.tree.leaves(restored)] == want
  # A synchronous Checkpointer writes inside `save`.
  with checkpoint.Checkpointer(
    tmp_path / "sync", every_steps=1, keep=1, async_save=False
  ) as ckpt:
    assert ckpt.save(3, state, CONFIG)
    assert ckpt_format.is_finalized(tmp_path / "sync" / "3")


def test_stateless_estimator_round_trip(tmp_path):
  """An empty estimator state (FullES) saves, restores, and is not mixed up
  with a stateful one."""
  stateful = make_run_state()
  stateless = dict(stateful, estimator_state={})
  with checkpoint.Checkpointer(
    tmp_path / "ckpt", every_steps=1, keep=2
  ) as ckpt:
    assert ckpt.save(1, stateless, CONFIG)  # async: deferred to the next call
    assert ckpt.save(2, stateful, CONFIG, force=True)
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [1, 2]
    assert_identical(ckpt.restore(1, stateless), stateless)
    with pytest.raises(ValueError, match="holds an estimator state"):
      ckpt.restore(2, stateless)
    with pytest.raises(checkpoint.CorruptCheckpointError):
      ckpt.restore(1, stateful)


def test_every_k_and_keep_n_policy(tmp_path):
  state = make_run_state(num_particles=2)
  directory = tmp_path / "ckpt"
  with checkpoint.Checkpointer(directory, every_steps=5, keep=2) as ckpt:
    saved = [s for s in range(3, 23) if ckpt.save(s, state, CONFIG)]
    # The first call of a fresh run always saves (orbax InitialSavePolicy).
    assert saved == [3, 5, 10, 15, 20]
    assert ckpt.save(22, state, CONFIG, force=True)
    assert not ckpt.save(22, state, CONFIG, force=True)  # already there
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [20, 22]
  assert sorted(os.listdir(directory)) == ["20", "22"]
  # A resumed run saves on the interval again, with no extra initial save.
  with checkpoint.Checkpointer(directory, every_steps=5, keep=2) as ckpt:
    assert ckpt.latest_step() == 22
    assert not ckpt.save(23, state, CONFIG)
    assert ckpt.save(25, state, CONFIG)
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [22, 25]


def test_every_seconds_saves_by_the_clock_across_restarts(tmp_path):
  """A save waits `every_seconds` after the previous one began, whatever the
  step count, and a restarted run counts from the newest one on disk."""
  every = 3.0  # seconds; margins for a loaded machine either side
  state = make_run_state(num_particles=2)
  directory = tmp_path / "ckpt"
  with checkpoint.Checkpointer(directory, every_seconds=every, keep=5) as ckpt:
    assert ckpt.save(1, state, CONFIG)  # a fresh run's first step
    assert not any(ckpt.save(s, state, CONFIG) for s in range(2, 40))
    ckpt.wait_until_finished()  # a save in flight would also say no
    time.sleep(every + 0.3)
    assert ckpt.save(40, state, CONFIG)
    assert not ckpt.save(41, state, CONFIG)
  with checkpoint.Checkpointer(directory, every_seconds=every, keep=5) as ckpt:
    assert not ckpt.save(42, state, CONFIG)  # step 40 is not old enough
    time.sleep(every + 0.3)
    assert ckpt.save(43, state, CONFIG)
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [1, 40, 43]


def test_keep_period_keeps_the_milestones_beside_the_newest(tmp_path):
  state = make_run_state(num_particles=2)
  with checkpoint.Checkpointer(
    tmp_path / "ckpt", every_steps=2, keep=2, keep_period=4
  ) as ckpt:
    for s in range(2, 15, 2):
      ckpt.save(s, state, CONFIG)
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [4, 8, 12, 14]


def test_latest_step_ignores_incomplete_checkpoints(tmp_path):
  state = make_run_state(num_particles=2)
  directory = tmp_path / "ckpt"
  with checkpoint.Checkpointer(directory, every_steps=1, keep=5) as ckpt:
    ckpt.save(2, state, CONFIG)
  # An async save killed half-way, as orbax leaves it on a local disk.
  commit_file = ocp.path.atomicity.COMMIT_SUCCESS_FILE
  tmp_dir = directory / "5.orbax-checkpoint-tmp-1234567"
  shutil.copytree(directory / "2", tmp_dir)
  (tmp_dir / commit_file).unlink()
  # A step directory without its commit marker (a partial copy, or the way an
  # interrupted save looks on GCS).
  shutil.copytree(directory / "2", directory / "9")
  (directory / "9" / commit_file).unlink()

  with checkpoint.Checkpointer(directory, every_steps=1, keep=5) as ckpt:
    assert ckpt.latest_step() == 2
    assert ckpt.all_steps() == [2]
    assert_identical(ckpt.restore(None, state), state)
    with pytest.raises(FileNotFoundError, match="step 9"):
      ckpt.restore(9, state)
    # Nor does the save policy count it: step 3 comes after step 2.
    assert ckpt.save(3, state, CONFIG)
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [2, 3]
  meta, _ = checkpoint.load_meta(directory)
  assert int(meta["step"]) == 7  # the value saved at step 3
  with pytest.raises(FileNotFoundError, match="step 9"):
    checkpoint.load_meta(directory, step=9)


def test_restore_rejects_changed_shapes(tmp_path):
  with checkpoint.Checkpointer(tmp_path, every_steps=1, keep=1) as ckpt:
    ckpt.save(1, make_run_state(num_particles=4), CONFIG)
    ckpt.wait_until_finished()
    with pytest.raises(
      ValueError, match=r"estimator_state\.inner_params\.w has shape"
    ):
      ckpt.restore(1, make_run_state(8))
    bigger_theta = make_run_state(num_particles=4)
    bigger_theta["theta"]["extra"] = jnp.zeros(3)
    with pytest.raises(ValueError, match=r"theta\.extra is not in"):
      ckpt.restore(1, bigger_theta)


def test_load_meta_without_shapes(tmp_path):
  state = make_run_state()
  with checkpoint.Checkpointer(tmp_path, every_steps=1, keep=3) as ckpt:
    ckpt.save(3, state, CONFIG)
    ckpt.save(4, {**state, "step": jnp.int32(4)}, {**CONFIG, "seed": 4})
  meta, config = checkpoint.load_meta(tmp_path)
  assert set(meta) == {"step", "theta", "outer_opt_state", "rng"}
  assert int(meta["step"]) == 4 and config["seed"] == 4
  assert_identical(meta["theta"], state["theta"])
  # Typed keys come back typed even though the metadata shows key data.
  assert_identical(meta["rng"], state["rng"])
  adam = meta["outer_opt_state"][0]
  np.testing.assert_array_equal(
    np.asarray(adam["mu"]["dense_0"]["kernel"]),
    np.asarray(state["outer_opt_state"][0].mu["dense_0"]["kernel"]),
  )
  meta3, config3 = checkpoint.load_meta(str(tmp_path), step=3)
  assert int(meta3["step"]) == 7 and config3["seed"] == 0
  with pytest.raises(FileNotFoundError, match="step 5"):
    checkpoint.load_meta(tmp_path, step=5)


def test_load_meta_without_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="empty") as info:
    checkpoint.load_meta(tmp_path)
  assert str(tmp_path) in str(info.value)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    checkpoint.load_meta(tmp_path / "nope")
  (tmp_path / "3.orbax-checkpoint-tmp-99").mkdir()
  (tmp_path / "notes.txt").write_text("hi")
  with pytest.raises(FileNotFoundError, match="3.orbax-checkpoint-tmp-99"):
    checkpoint.load_meta(tmp_path)


def test_bad_arguments(tmp_path):
  with pytest.raises(ValueError, match="every_seconds"):
    checkpoint.Checkpointer(tmp_path, every_steps=0, keep=1)
  with pytest.raises(ValueError, match="every_seconds"):
    checkpoint.Checkpointer(tmp_path, every_steps=1, every_seconds=-1, keep=1)
  with pytest.raises(ValueError, match="keep"):
    checkpoint.Checkpointer(tmp_path, every_steps=1, keep=0)
  with checkpoint.Checkpointer(tmp_path, every_steps=1, keep=1) as ckpt:
    state = make_run_state(num_particles=2)
    with pytest.raises(TypeError, match="JSON"):
      ckpt.save(1, state, {"f": object()})
    with pytest.raises(ValueError, match="estimator_state"):
      ckpt.save(1, {"theta": state["theta"]}, CONFIG)


# Runs in a fresh interpreter, so that it can have its own fake device count:
# `write` builds the run state on 8 devices with the estimator state sharded
# over 'particles' and saves it; `read` (on 4 devices) restores it onto meshes
# of 4, 2 and 1 devices and compares it with a single-device rebuild.
_ELASTIC_SCRIPT = textwrap.dedent("""
    import sys
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from lopt import checkpoint
    from tests.test_checkpoint import CONFIG, assert_identical, make_run_state

    mode, directory, devices = sys.argv[1], sys.argv[2], int(sys.argv[3])
    assert jax.device_count() == devices, jax.devices()

    def shardings(n):
      mesh = jax.make_mesh(
          (n,), ('particles',),
          axis_types=(jax.sharding.AxisType.Auto,),
          devices=jax.devices()[:n])
      replicated = NamedSharding(mesh, P())
      return {'step': replicated, 'theta': replicated,
              'outer_opt_state': replicated, 'rng': replicated,
              'estimator_state': NamedSharding(mesh, P('particles'))}

    if mode == 'write':
      # As lopt.train does it: the targets are jax.eval_shape of a jitted
      # init whose out_shardings carry the current shardings.
      abstract = jax.eval_shape(
          jax.jit(make_run_state, out_shardings=shardings(devices)))
      state = jax.device_put(
          make_run_state(), jax.tree.map(lambda s: s.sharding, abstract))
      assert state['estimator_state'].key.sharding.num_devices == devices
      def bump(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
          return jax.random.wrap_key_data(jax.random.key_data(x) ^ 1)
        return x + 1

      with checkpoint.Checkpointer(directory, every_steps=1, keep=1) as ckpt:
        assert ckpt.save(1, state, CONFIG)
        # As the training loop does: its next step takes the buffers (key
        # arrays too) before orbax has read the save's copy.
        jax.jit(lambda s: jax.tree.map(bump, s), donate_argnums=0)(state)
        assert state['rng'].is_deleted()
      print('WROTE', devices)
    else:
      expected = make_run_state()
      with checkpoint.Checkpointer(directory, every_steps=1, keep=1) as ckpt:
        for n in (4, 2, 1):
          abstract = jax.eval_shape(
              jax.jit(make_run_state, out_shardings=shardings(n)))
          restored = ckpt.restore(ckpt.latest_step(), abstract)
          for leaf in jax.tree.leaves(restored['estimator_state']):
            assert leaf.sharding.num_devices == n, leaf.sharding
            assert leaf.sharding.spec == P('particles'), leaf.sharding
            assert len(leaf.addressable_shards) == n
            assert leaf.addressable_shards[0].data.shape[0] == 8 // n
          assert_identical(restored, expected)
          print('RESTORED', n)
""")


def _run_with_devices(args: list[str], devices: int) -> str:
  env = dict(os.environ)
  env["XLA_FLAGS"] = (
    env.get("XLA_FLAGS", "")
    + f" --xla_force_host_platform_device_count={devices}"
  ).strip()
  env["JAX_PLATFORMS"] = "cpu"
  env.pop("JAX_NUM_CPU_DEVICES", None)  # would win over the XLA flag
  result = subprocess.run(
    [sys.executable, "-c", _ELASTIC_SCRIPT, *args, str(devices)],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 0, result.stderr[-4000:]
  return result.stdout


def test_restore_onto_fewer_devices(tmp_path):
  directory = str(tmp_path / "ckpt")
  assert "WROTE 8" in _run_with_devices(["write", directory], 8)
  out = _run_with_devices(["read", directory], 4)
  for n in (4, 2, 1):
    assert f"RESTORED {n}" in out
