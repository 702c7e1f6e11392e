"""The inner tasks beyond image classifiers, through the whole pipeline.

A causal transformer on text, an MLP autoencoder, an MLP regressor on a
tabular dataset and a residual CNN with normalisation are first-class
tasks: each has a single-task config (configs/task_kinds.py), joins a
family (configs/tiny_kinds.py has one group of each), and keeps every
guarantee of the digits tasks. Checked here: configs validate and every bad
field is named; a family with a transformer group resumes bit-exactly
after a stop, and on 8 devices (elastically) close to a straight run; a
diverging group's non-finite losses do not reach theta.
"""

import importlib
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from test_sharding import (
  assert_trees_close,
  child_env,
  finish,
  flat,
  kill_leftovers,
  shared_dirs,
  start,
)
from test_train import committed_steps, restore_final

from configs import task_kinds, tiny_kinds
from lopt import experiment, validation
from lopt.train import step as train_step

GROUPS = ("ae", "lm", "reg", "res")
#: The groups of the resume tests: the transformer and the cheapest other.
RESUMED = ("lm", "reg")
KINDS_CONFIG = f"configs/tiny_kinds.py:{','.join(RESUMED)}"


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  return shared_dirs(tmp_path_factory)


def kinds_config(data_dir=None, groups=GROUPS) -> ml_collections.ConfigDict:
  """configs/tiny_kinds.py without the `adam` normaliser's reference runs
  (tests/test_family.py covers the normaliser): seconds less per build."""
  config = tiny_kinds.get_config(",".join(groups))
  config.family.normalizer = "none"
  if data_dir:
    config.task.data_dir = data_dir
  return config


@pytest.mark.parametrize("kind", sorted(task_kinds.KINDS))
def test_every_kind_has_a_valid_single_task_config(kind, dirs):
  config = task_kinds.get_config(kind)
  validation.check_config(config)
  config.task.data_dir = dirs[0]
  data, dataset = experiment.load_data(config)
  exp = experiment.build(config, dataset)
  objective = {
    "transformer": "language_model",
    "autoencoder": "reconstruction",
    "regression": "regression",
    "resnet": "classification",
  }[kind]
  assert exp.task.objective == objective
  assert not exp.is_family
  if kind == "transformer":
    # The size class: a transformer of 100k parameters or more.
    assert exp.task.num_params >= 100_000
  # One inner step of the learned optimizer runs and gives a finite loss.
  system = exp.system(data)
  theta = train_step.initial_theta(exp)
  state = system.init(jax.random.key(0))
  _, loss = jax.jit(system.step)(theta, state, 0, jax.random.key(1))
  assert np.isfinite(float(loss))


def test_an_unknown_kind_names_the_valid_ones():
  with pytest.raises(ValueError, match="autoencoder"):
    task_kinds.get_config("gan")
  importlib.import_module("configs.task_kinds")


def _with(config, **fields):
  config = ml_collections.ConfigDict(config)
  for field, value in fields.items():
    section, *rest = field.split("__")
    node = config[section]
    for name in rest[:-1]:
      node = node[name]
    node[rest[-1]] = value
  return config


@pytest.mark.parametrize(
  "fields, message",
  [
    (dict(task__model="transformer"), r"task\.model = 'transformer'.*images"),
    (
      dict(task__dataset="python_stdlib"),
      r"task\.model = 'mlp'.*text data.*transformer",
    ),
    (
      dict(task__dataset="diabetes", task__image_size=8),
      r"task\.image_size = 8.*diabetes",
    ),
    (dict(task__model="resnet", task__norm="batch"), r"task\.norm = 'batch'"),
    (
      dict(task__model="autoencoder", task__reconstruction="l1"),
      r"task\.reconstruction = 'l1'",
    ),
    (
      dict(
        task__model="transformer",
        task__dataset="python_stdlib",
        task__hidden=(64, 32),
      ),
      r"task\.hidden = \(64, 32\).*multiple of heads",
    ),
    (
      dict(
        task__model="transformer", task__dataset="python_stdlib", task__heads=0
      ),
      r"task\.heads = 0",
    ),
  ],
)
def test_bad_kind_fields_are_named(fields, message):
  base = task_kinds.get_config("regression")
  base.task.dataset = "digits"
  base.task.model = "mlp"
  with pytest.raises(validation.ConfigError, match=message):
    validation.check_config(_with(base, **fields))


def test_bad_family_kind_fields_are_named():
  config = tiny_kinds.get_config()
  config.family.tasks.lm.seq_len = 0
  with pytest.raises(
    validation.ConfigError, match=r"family\.tasks\.lm\.seq_len = 0"
  ):
    validation.check_config(config)
  config = tiny_kinds.get_config()
  config.family.normalizer = "lo"
  with pytest.raises(
    validation.ConfigError, match=r"family\.normalizer = 'lo'"
  ):
    validation.check_config(config)


def test_a_diverging_group_does_not_poison_theta(dirs):
  config = kinds_config(dirs[0])
  data, dataset = experiment.load_data(config)
  exp = experiment.build(config, dataset)
  assert sorted(g.name for g in exp.groups) == list(GROUPS)
  run_state = jax.jit(lambda d: train_step.init_run_state(exp, d))(data)
  # A learning rate of e^60 overflows float32 within a few inner steps.
  theta = dict(run_state["theta"], log_lr=jnp.asarray(60.0))
  run_state, info = jax.jit(
    lambda d, s: train_step.train_steps(exp, d, s, num_steps=3)
  )(data, dict(run_state, theta=theta))
  for name in GROUPS:
    assert int(np.sum(info[f"{name}/nonfinite"])) > 0, name
  for leaf in jax.tree.leaves(run_state["theta"]):
    assert np.all(np.isfinite(leaf))


def _run(workdir, devices, steps, dirs, *flags):
  data_dir, cache_dir = dirs
  command = [
    sys.executable,
    "-m",
    "lopt.main",
    f"--config={KINDS_CONFIG}",
    f"--workdir={workdir}",
    f"--config.task.data_dir={data_dir}",
    "--config.eval.every_steps=0",
    "--config.checkpoint.every_steps=2",
    "--config.family.normalizer=none",
    f"--config.outer.num_steps={steps}",
    *flags,
  ]
  process = start(command, f"{workdir}.log", child_env(cache_dir, devices))
  return finish(process, f"{devices}-device run in {workdir}")


@pytest.fixture(scope="module")
def straight_and_resumed(dirs, tmp_path_factory):
  """The family run 4 steps straight, and 2 steps then resumed to 4."""
  base = tmp_path_factory.mktemp("kinds")
  straight, resumed = base / "straight", base / "resumed"
  try:
    out = _run(straight, 1, 4, dirs)
    for name in RESUMED:
      assert f"Task {name}:" in out
    _run(resumed, 1, 2, dirs)
    shutil.copytree(resumed, base / "at_step_2")
    assert "Resuming from the checkpoint of step 2" in _run(resumed, 1, 4, dirs)
  finally:
    kill_leftovers()
  return straight, resumed, base / "at_step_2"


def test_a_family_with_a_transformer_group_resumes_bit_exactly(
  straight_and_resumed, dirs
):
  straight, resumed, _ = straight_and_resumed
  assert committed_steps(resumed)[-1] == 4
  config = kinds_config(dirs[0], RESUMED)
  a, b = restore_final(straight, config), restore_final(resumed, config)
  assert sorted(a["estimator_state"]) == list(RESUMED)
  # The transformer's persistent inner state is there, and bit-identical.
  lm = flat(a["estimator_state"]["lm"])
  assert any("embedding" in name for name in lm)
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.slow
def test_the_family_resumes_elastically_onto_eight_devices(
  straight_and_resumed, dirs, tmp_path
):
  straight, _, at_step_2 = straight_and_resumed
  elastic = tmp_path / "elastic"
  shutil.copytree(at_step_2, elastic)
  try:
    out = _run(elastic, 8, 4, dirs)
  finally:
    kill_leftovers()
  assert "Resuming from the checkpoint of step 2" in out
  assert "8 x cpu" in out
  config = kinds_config(dirs[0], RESUMED)
  a = flat(restore_final(straight, config))
  b = flat(restore_final(elastic, config))
  for name in a:
    if name.endswith(("counter", "noise")) or name in ("step", "rng"):
      np.testing.assert_array_equal(a[name], b[name], err_msg=name)
  # Float32 summation order differs across device counts, and the
  # transformer's inner state amplifies it: the key part of an attention
  # bias gets a gradient that is exactly 0 in exact arithmetic (softmax
  # ignores a shift shared by all keys), so those entries, and the adaptive
  # kind's trace and per-tensor rates of their tensor, follow rounding
  # noise (measured: 0.23 of that leaf's own small scale, 0.007 absolute).
  # The transformer group's inner state is held to 3e-2 of the group's
  # largest entry; everything else, theta and the outer optimizer
  # included, to 1e-3 of each leaf's scale. A wrong key, particle or
  # reduction is off by order 1.
  lm = {n for n in a if n.startswith("estimator_state.lm.inner.")}
  assert lm
  scale = max(float(np.abs(a[n]).max()) for n in lm)
  for name in sorted(lm):
    error = float(np.abs(np.asarray(a[name]) - np.asarray(b[name])).max())
    assert error <= 3e-2 * scale, (name, error, scale)
  assert_trees_close(
    {n: a[n] for n in a if n not in lm},
    {n: b[n] for n in b if n not in lm},
    tol=1e-3,
  )
  assert os.path.isdir(elastic / "checkpoints" / "4")
