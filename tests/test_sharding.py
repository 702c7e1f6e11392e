"""Sharding the particles: 1 device vs 8, elastic resume, config checks.

Multi-device runs are real: subprocesses with their own
`XLA_FLAGS=--xla_force_host_platform_device_count=N`, since the pytest
process stays single-device (JAX fixes its device count at the first
computation). The subprocesses run this file as a script (see the workers
at the bottom), i.e. the real `train.train_and_evaluate` with real orbax
checkpoints, plus a report of what they saw.

Compilation dominates these seconds-long runs on a small CPU machine, so
every subprocess (here and in test_multiprocess.py) shares one persistent
compilation cache and compiles with LLVM at -O0. Neither changes what runs:
the cache returns the executable the same program compiled to before, and
the partitioned programs are the same. They also share one prepared digits
directory.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags as absl_flags
from absl import logging
from jax.sharding import PartitionSpec as P
from ml_collections import config_flags

from configs import tiny, tpu_fashion_mnist8_nres
from lopt import checkpoint, estimators, experiment, sharding, train, validation
from lopt.tasks import data as data_lib
from lopt.train import step as train_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Every run here: the tiny config with 8 particles (1 per device on 8),
#: logging and checkpointing every step, no meta-evaluation (it is not what
#: these tests are about, except where a test turns it back on).
OVERRIDES = {
  "estimator.num_particles": 8,
  "eval.every_steps": 0,
  "log.every_steps": 1,
  "checkpoint.every_steps": 1,
}
TIMEOUT = 240  # seconds; a hung collective must fail the test, not CI


# -- shared by test_multiprocess.py ------------------------------------------


def shared_dirs(tmp_path_factory):
  """A digits tfds directory (prepared once) and a JAX compilation cache.

  Both live in the session's base temp directory, so every test module and
  subprocess of one pytest session shares them.
  """
  base = tmp_path_factory.getbasetemp()
  data_dir, cache_dir = base / "tfds", base / "jax_cache"
  cache_dir.mkdir(exist_ok=True)
  if not data_dir.exists():
    # Prepared here, once, so that concurrent subprocesses only read it.
    data_lib.load_dataset("digits", data_dir=str(data_dir))
  return str(data_dir), str(cache_dir)


def child_env(cache_dir: str, devices: int) -> dict[str, str]:
  """The environment of a subprocess with `devices` CPU devices."""
  env = dict(os.environ)
  flags = [
    f
    for f in env.get("XLA_FLAGS", "").split()
    if not f.startswith(
      (
        "--xla_force_host_platform_device_count",
        "--xla_backend_optimization_level",
      )
    )
  ]
  env.update(
    {
      "JAX_PLATFORMS": "cpu",
      # LLVM at -O0 halves XLA:CPU compile times (see the docstring).
      "XLA_FLAGS": " ".join(
        flags
        + [
          f"--xla_force_host_platform_device_count={devices}",
          "--xla_backend_optimization_level=0",
        ]
      ),
      "JAX_NUM_CPU_DEVICES": str(devices),
      "JAX_COMPILATION_CACHE_DIR": cache_dir,
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
      "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
      "PYTHONPATH": os.pathsep.join(
        [REPO] + [p for p in [env.get("PYTHONPATH")] if p]
      ),
    }
  )
  return env


def overrides(data_dir: str, **fields) -> list[str]:
  """`--config.a.b=v` flags: OVERRIDES, the shared data_dir, then `fields`."""
  values = dict(OVERRIDES, **{"task.data_dir": data_dir})
  values.update({k.replace("__", "."): v for k, v in fields.items()})
  return [f"--config.{k}={v}" for k, v in values.items()]


def flat(tree) -> dict[str, np.ndarray]:
  """A run state as host arrays {'theta.mlp.layer_0.bias': array, ...}."""
  return {
    jax.tree_util.keystr(path, simple=True, separator="."): leaf
    for path, leaf in jax.tree_util.tree_flatten_with_path(
      sharding.to_host(tree)
    )[0]
  }


def assert_trees_close(a: dict, b: dict, tol: float = 1e-4):
  """Leaf for leaf: integers equal, floats within `tol` of the leaf's scale.

  Float results on different device counts differ in the order of their
  float32 sums (over particles, and XLA's vectorisation of batched matmuls),
  and an ES gradient amplifies loss differences by 1 / (2 sigma^2). Measured
  differences are <= 1e-5 of each leaf's largest magnitude; a real bug (a
  wrong key, particle or reduction) is off by order 1.
  """
  assert sorted(a) == sorted(b)
  for name in a:
    x, y = np.asarray(a[name]), np.asarray(b[name])
    assert x.shape == y.shape, name
    if not np.issubdtype(x.dtype, np.floating):
      np.testing.assert_array_equal(x, y, err_msg=name)
      continue
    scale = float(np.max(np.abs(x), initial=0.0))
    error = float(np.max(np.abs(x.astype(np.float64) - y), initial=0.0))
    assert error <= tol * scale, (
      f"{name}: max difference {error:.3g} > {tol} x scale {scale:.3g}"
    )


def finish(
  process: subprocess.Popen,
  what: str,
  timeout: float = TIMEOUT,
  status: int = 0,
) -> str:
  """Waits (with a hard timeout) for a process; returns its output.

  Fails unless it exits with `status` (`lopt.main.EXIT_PREEMPTED` for a
  run that SIGTERM stopped).

  The output goes to a file (`process.log_path`), not a pipe: a pipe that
  nobody reads while we wait for another process fills up and stalls its
  writer.
  """
  try:
    process.wait(timeout=timeout)
    timed_out = False
  except subprocess.TimeoutExpired:
    process.kill()
    process.wait()
    timed_out = True
  with open(process.log_path) as f:
    out = f.read()
  assert not timed_out, f"{what} timed out after {timeout} s:\n{out[-3000:]}"
  assert process.returncode == status, (
    f"{what}: exit {process.returncode}, expected {status}:\n{out[-3000:]}"
  )
  return out


_STARTED: list[subprocess.Popen] = []


def start(
  command: list[str], log_path, env: dict[str, str]
) -> subprocess.Popen:
  """Starts `command` in the repository with its output in `log_path`."""
  with open(log_path, "w") as log:
    process = subprocess.Popen(
      command,
      cwd=REPO,
      env=env,
      stdout=log,
      stderr=subprocess.STDOUT,
      stdin=subprocess.DEVNULL,
    )
  process.log_path = str(log_path)
  _STARTED.append(process)
  return process


def kill_leftovers() -> None:
  """Kills the processes this session started that still run (by PID)."""
  while _STARTED:
    process = _STARTED.pop()
    if process.poll() is None:
      process.kill()
      process.wait()


@pytest.fixture(autouse=True)
def no_leftover_processes():
  """A failing test must not leave its subprocesses running."""
  yield
  kill_leftovers()


def report(output: str) -> dict:
  lines = [line for line in output.splitlines() if line.startswith("REPORT ")]
  assert lines, output[-3000:]
  return json.loads(lines[-1][len("REPORT ") :])


# -- workers ------------------------------------------------------------------


def start_worker(
  mode: str, workdir, devices: int, cache_dir: str, flags: list[str]
) -> subprocess.Popen:
  """Runs `worker(mode, workdir, flags)` in a process with `devices` devices."""
  return start(
    [sys.executable, os.path.abspath(__file__), mode, str(workdir), *flags],
    f"{workdir}.log",
    child_env(cache_dir, devices),
  )


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  return shared_dirs(tmp_path_factory)


@pytest.fixture(scope="module")
def reference_runs(dirs, tmp_path_factory):
  """The same 2 outer steps on 1 and on 8 devices, run side by side.

  A third process, also on 8 devices, checks every estimator on a toy
  system (see `estimators_worker`); its report is under the key
  'estimators'.
  """
  data_dir, cache_dir = dirs
  base = tmp_path_factory.mktemp("reference")
  flags = overrides(data_dir, outer__num_steps=2)
  runs = {
    d: start_worker("train", base / f"devices{d}", d, cache_dir, flags)
    for d in (1, 8)
  }
  runs["estimators"] = start_worker(
    "estimators", base / "estimators", 8, cache_dir, []
  )
  try:
    return {
      d: (base / f"devices{d}", report(finish(p, f"{d} worker")))
      for d, p in runs.items()
    }
  finally:
    kill_leftovers()  # only if one failed: the others are done


def test_every_estimator_is_the_same_sharded(reference_runs):
  """shard_particles on 8 devices against the plain vmap, per estimator."""
  _, rep = reference_runs["estimators"]
  assert rep["devices"] == 8
  assert sorted(rep["errors"]) == ["full_es", "nres", "tbptt", "tes"]
  for name, error in rep["errors"].items():
    assert error <= 1e-5, f"{name}: relative difference {error}"
  assert all(rep["sharded"].values()), rep["sharded"]


def test_one_and_eight_devices_give_the_same_outer_steps(reference_runs):
  (dir1, rep1), (dir8, rep8) = reference_runs[1], reference_runs[8]
  # The 8-device run really is sharded: one particle per device, and XLA
  # reduces the gradient sums across the devices.
  assert rep8["devices"] == 8 and rep1["devices"] == 1
  assert rep8["particle_spec"] == rep1["particle_spec"] == "particles"
  assert rep8["counter_shard_shape"] == [1]
  assert rep1["counter_shard_shape"] == [8]
  assert rep8["all_reduce"] and not rep1["all_reduce"]
  # Step 1: Adam's first moment after one update is (1 - b1) times the
  # (clipped) gradient, so comparing it compares the ES gradient itself.
  meta1, _ = checkpoint.load_meta(str(dir1 / "checkpoints"), step=1)
  meta8, _ = checkpoint.load_meta(str(dir8 / "checkpoints"), step=1)
  mu1 = flat(meta1["outer_opt_state"])
  grads = [name for name in mu1 if ".mu." in f".{name}."]
  assert grads and any(np.any(mu1[name] != 0) for name in grads)
  assert_trees_close(flat(meta1), flat(meta8))
  # Step 2, the whole run state, every particle's inner state included.
  final1 = dict(np.load(dir1 / "final.npz"))
  final8 = dict(np.load(dir8 / "final.npz"))
  assert_trees_close(final1, final8)
  # Same randomness, not just close numbers: keys, counters and every
  # particle's noise are bit-identical.
  for name in final1:
    if name.startswith(
      ("rng", "estimator_state.noise", "estimator_state.counter")
    ):
      np.testing.assert_array_equal(final1[name], final8[name])


@pytest.mark.slow
def test_elastic_resume_from_eight_devices_onto_two_and_one(
  reference_runs, dirs, tmp_path
):
  data_dir, cache_dir = dirs
  source, _ = reference_runs[8]
  saved = dict(np.load(source / "final.npz"))  # its state at step 2
  flags = overrides(data_dir, outer__num_steps=4)
  runs = {}
  for devices in (2, 1):
    workdir = tmp_path / f"devices{devices}"
    shutil.copytree(source, workdir)
    runs[devices] = start_worker("resume", workdir, devices, cache_dir, flags)
  finals = {}
  for devices, process in runs.items():
    out = finish(process, f"resume on {devices} devices")
    rep = report(out)
    workdir = tmp_path / f"devices{devices}"
    assert "Resuming from the checkpoint of step 2" in out
    assert rep["devices"] == devices and rep["restored_step"] == 2
    # Restored exactly what the 8-device run held, now 8 / devices
    # particles per device.
    assert rep["restored_counter_shard_shape"] == [8 // devices]
    restored = dict(np.load(workdir / "restored.npz"))
    assert sorted(restored) == sorted(saved)
    for name in saved:
      np.testing.assert_array_equal(restored[name], saved[name], err_msg=name)
    # ... and continued to the end.
    assert rep["final_step"] == 4
    assert (
      max(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
      == 4
    )
    finals[devices] = dict(np.load(workdir / "final.npz"))
  # Two devices and one agree on the continuation too.
  assert_trees_close(finals[2], finals[1])


def test_particles_must_divide_the_devices():
  config = tiny.get_config()
  config.estimator.num_particles = 12
  with pytest.raises(ValueError, match=r"num_particles \(12\).*devices \(8\)"):
    validation.check_config(config, num_devices=8)
  validation.check_config(config, num_devices=4)
  with pytest.raises(ValueError, match=r"\(10\).*\(4\).*8 or 12"):
    sharding.check_divisible(10, 4)


def test_mesh_and_run_state_shardings():
  mesh = sharding.make_mesh()
  assert mesh.axis_names == ("particles",) and mesh.size == jax.device_count()
  assert mesh.axis_types == (jax.sharding.AxisType.Auto,)
  state = {
    "step": 0,
    "theta": {"w": np.zeros(3)},
    "rng": 0,
    "outer_opt_state": (np.zeros(3),),
    "estimator_state": {"inner": np.zeros((4, 2)), "counter": np.zeros(4)},
  }
  specs = jax.tree.map(
    lambda s: s.spec, sharding.run_state_shardings(state, mesh)
  )
  assert specs["estimator_state"] == {
    "inner": P("particles"),
    "counter": P("particles"),
  }
  assert specs["theta"] == {"w": P()} and specs["step"] == P()
  assert specs["outer_opt_state"] == (P(),) and specs["rng"] == P()


def test_the_config_for_pod_slices_scales_the_particles():
  tpu = tpu_fashion_mnist8_nres
  config = tpu.get_config("devices=32,per_device=4")
  assert config.estimator.num_particles == 128
  assert (config.task.dataset, config.task.image_size) == ("fashion_mnist", 8)
  assert (config.estimator.name, config.estimator.unroll_length) == ("nres", 1)
  validation.check_config(config, num_devices=32)
  validation.check_config(config, num_devices=16)  # resumed on a smaller slice
  assert tpu.get_config().estimator.num_particles == 128  # 16 x 8
  with pytest.raises(ValueError, match="devices"):
    tpu.get_config("chips=4")


# -- the workers (this file as a script) ---------------------------------------


def estimators_worker() -> None:
  """Each kind of estimator, sharded over all devices vs a plain vmap.

  One of each class (NRES stands for the GPES family; TruncatedES; FullES,
  which keeps no state; TBPTT, which differentiates inside the shard_map),
  on a toy system that samples minibatches from a (replicated) dataset with
  per-particle keys, like the inner training: init and one estimate,
  jitted, compared leaf for leaf; and the sharded state must be laid out one
  particle block per device. (Step-unlocked burn-in goes through the same
  `particle_map`; the end-to-end runs cover it.)
  """

  @dataclasses.dataclass(frozen=True)
  class NoisyRegression:
    data: dict
    horizon: int = 12

    def init(self, key):
      return jax.random.normal(key, (3,))

    def step(self, theta, w, t, key):
      del t
      idx = jax.random.randint(key, (4,), 0, self.data["x"].shape[0])
      x, y = self.data["x"][idx], self.data["y"][idx]
      loss, g = jax.value_and_grad(lambda w: jnp.mean((x @ w - y) ** 2))(w)
      w = (1 - 0.1 * jax.nn.sigmoid(theta["decay"])) * w - jnp.exp(
        theta["log_lr"]
      ) * g
      return w, loss

  rng = np.random.default_rng(0)
  x = rng.standard_normal((64, 3)).astype(np.float32)
  mesh = sharding.make_mesh()
  data = sharding.put_replicated(
    {"x": x, "y": x @ np.float32([1, -2, 0.5])}, mesh
  )
  theta = {"log_lr": jnp.float32(-2.0), "decay": jnp.float32(0.0)}
  errors, sharded = {}, {}
  for name in ("full_es", "nres", "tbptt", "tes"):

    def build(data, name=name):
      return estimators.make(
        name,
        NoisyRegression(data),
        num_particles=8,
        unroll_length=4,
        sigma=0.1,
        step_unlocked=False,
      )

    def run(est):
      def f(theta, key):
        k_init, k_estimate = jax.random.split(key)
        state = est.init(theta, k_init)
        return est.estimate(theta, state, k_estimate)

      return jax.jit(f)(theta, jax.random.key(1))

    plain = flat(run(build(data)))
    out = run(sharding.shard_particles(build, data, mesh))
    sharded[name] = all(
      leaf.sharding.spec == P(sharding.AXIS)
      and len({s.device for s in leaf.addressable_shards}) == mesh.size
      for leaf in jax.tree.leaves(out[1])
    )
    out = flat(out)
    errors[name] = max(
      float(
        np.max(np.abs(out[k] - plain[k]), initial=0)
        / max(float(np.max(np.abs(plain[k]), initial=0)), 1e-30)
      )
      for k in plain
    )
  print(
    "REPORT "
    + json.dumps(
      {"devices": jax.device_count(), "errors": errors, "sharded": sharded}
    ),
    flush=True,
  )


def worker(mode: str, workdir: str, flags: list[str]) -> None:
  """Meta-trains the tiny config in `workdir`; prints a REPORT json line.

  mode 'train': from scratch (or wherever workdir's checkpoints are).
  mode 'resume': first restores the newest checkpoint with this process's
  shardings, exactly as train_and_evaluate does, and saves it as
  restored.npz; then continues with train_and_evaluate.
  Either way the final run state goes to final.npz.
  """
  config_flag = config_flags.DEFINE_config_file("config")
  absl_flags.FLAGS([sys.argv[0], "--config=configs/tiny.py", *flags])
  config = config_flag.value
  logging.set_verbosity(logging.INFO)
  logging.use_absl_handler()
  result = {"devices": jax.device_count()}
  if mode == "resume":
    mesh = sharding.make_mesh()
    data, dataset = experiment.load_data(config, mesh)
    exp = experiment.build(config, dataset, mesh)
    _, _, abstract, _ = train_step.sharded_functions(exp, data)
    with checkpoint.Checkpointer(
      os.path.join(workdir, "checkpoints"), every_steps=1, keep=10
    ) as ckpt:
      step = ckpt.latest_step()
      restored = ckpt.restore(step, abstract)
    counter = restored["estimator_state"].counter
    result.update(
      restored_step=step,
      restored_counter_shard_shape=list(
        counter.addressable_shards[0].data.shape
      ),
    )
    np.savez(os.path.join(workdir, "restored.npz"), **flat(restored))
  else:
    # Compiling the step here also proves where XLA put the reduction; the
    # persistent cache hands train_and_evaluate the same executable.
    mesh = sharding.make_mesh()
    data, dataset = experiment.load_data(config, mesh)
    exp = experiment.build(config, dataset, mesh)
    _, steps_fn, abstract, _ = train_step.sharded_functions(exp, data)
    hlo = steps_fn.lower(data, abstract).compile().as_text()
    result["all_reduce"] = "all-reduce" in hlo
  began = time.perf_counter()
  state = train.train_and_evaluate(config, workdir)
  counter = state["estimator_state"].counter
  result.update(
    seconds=time.perf_counter() - began,
    final_step=int(sharding.to_host(state["step"])),
    particle_spec=str(counter.sharding.spec[0]),
    counter_shard_shape=list(counter.addressable_shards[0].data.shape),
  )
  np.savez(os.path.join(workdir, "final.npz"), **flat(state))
  print("REPORT " + json.dumps(result), flush=True)


if __name__ == "__main__":
  if sys.argv[1] == "estimators":
    estimators_worker()
  else:
    worker(sys.argv[1], sys.argv[2], sys.argv[3:])
