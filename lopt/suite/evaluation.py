"""Held-out evaluation suites: a learned optimizer against Adam tuned per task
and against the optimizers that need no tuning.

    python -m lopt.evaluate --workdir=/tmp/lopt --suite=heldout

    summary = suite.evaluate_suite("/tmp/lopt", "quick")
    print(suite.format_table(summary))

Every task of the suite (`lopt.suite.tasks`) trains fresh models, one per
seed, with the learned optimizer (told the task's horizon T) and with Adam
over `LEARNING_RATES` x `SCHEDULES` (constant, and decayed to 0 linearly or
along a cosine), all by `lopt.tasks.inner.train_model` on the same inits and
batches.
Seeds and learning rates are vmapped inside one jit per schedule. The best
Adam of a task is the configuration of lowest mean training loss over seeds;
a configuration with a non-finite run is never the best.

A learned optimizer is sold on needing no tuning, so its real competitors
are the optimizers a user runs untuned: every task also trains the
baselines of `lopt.suite.baselines` (Adam at 1e-3, Prodigy, schedule-free
AdamW, at their documented defaults) on the same inits and batches, by the
same `train_models`; schedule-free ones are tested at their averaged
iterate (`baselines.eval_params`).

Per task:

* `ratio`: the learned optimizer's mean training loss over the T steps (the
  meta-objective) over the best Adam's; below 1 is better.
* `final_ratio`: the same for the final loss (mean of the last 10 steps).
* `speedup` (VeLO's measure): the step at which the best Adam's seed-mean
  curve, EMA-smoothed (`EMA`) and made monotone by a running minimum, first
  reaches the learned optimizer's final loss (linear interpolation between
  steps), divided by T. Adam runs T steps only, so speedups above 1 are
  censored: when Adam never gets there, `speedup` is None and
  `adam_never_reached` is true, and the task counts as a speedup win.
* test accuracies of both, and `failed`: a learned run ended non-finite or
  with its final loss above its initial loss.
* `test_loss_ratio`: the learned optimizer's held-out (test) loss over the
  best Adam's (seed means): whether faster training costs generalisation.
* `ratios[b]` and `final_ratios[b]` against each baseline b, and against
  `tuning_free`, the better (lower mean training loss) of the tuning-free
  baselines there, named by `tuning_free_best`.

Aggregates over tasks, per axis (`lopt.suite.metrics.AXES`: tuned Adam's
mean loss, which are also the top-level keys, Adam 1e-3, the best
tuning-free, tuned Adam's final loss, tuned Adam's test loss): the fraction
where the learned optimizer wins (ratio < 1), the median, worst (largest)
and interquartile mean of the ratios, each with a 95% bootstrap interval
that resamples seeds within tasks (the best Adam configuration and the
best tuning-free baseline are kept fixed); and the speedup wins.

Tuned-Adam results are cached, one JSON file per task, under
`~/.cache/lopt/adam_suite` by default, keyed by a hash of the task spec, the
seeds, the grid and `ADAM_CACHE_VERSION`; a second optimizer scored on the
same suite reuses them. Bump the version when anything that changes Adam's
numbers changes (training code, data, the Adam settings). Each baseline is
cached the same way in the same directory, one file per task and baseline,
keyed by the spec, the seeds, the baseline's name, the optax version and
`BASELINE_CACHE_VERSION` (bump it when a baseline's definition changes).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt import console, export, jsonio
from lopt.learned import optimizers
from lopt.suite import baselines as baselines_lib
from lopt.suite import metrics as suite_metrics
from lopt.suite import report as suite_report
from lopt.suite.tasks import SUITES, Suite, SuiteTask, build_task, task_keys
from lopt.tasks import data as data_lib
from lopt.tasks import inner

#: Adam's learning rates: 1e-4 .. 1e-1 at 1, 2, 5 per decade (10 values).
LEARNING_RATES = tuple(
  round(m * 10.0**e, 6) for e in range(-4, -1) for m in (1, 2, 5)
) + (0.1,)
SCHEDULES = ("constant", "linear", "cosine")
#: Part of every Adam cache key; bump it when Adam's numbers would change.
ADAM_CACHE_VERSION = 1
#: Part of every baseline's cache key; bump it when their numbers would change.
BASELINE_CACHE_VERSION = 1
DEFAULT_ADAM_CACHE_DIR = "~/.cache/lopt/adam_suite"

# -- training -----------------------------------------------------------------


def adam(lr, num_steps: int, schedule: str) -> optax.GradientTransformation:
  """optax Adam at `lr`, constant or decayed to 0 over `num_steps`."""
  if schedule == "constant":
    return optax.adam(lr)
  if schedule == "linear":
    return optax.adam(optax.linear_schedule(lr, 0.0, num_steps))
  if schedule == "cosine":
    return optax.adam(optax.cosine_decay_schedule(lr, num_steps))
  raise ValueError(f"Unknown schedule {schedule!r}; valid: {list(SCHEDULES)}")


def train_models(
  task, make_tx, data, keys, num_steps, hypers, eval_params=None
):
  """Trains one model per (hyperparameter, key) in one jit.

  Args:
    task: a `lopt.tasks.models.Task` or `lopt.suite.nnx.NNXTask`.
    make_tx: maps one hyperparameter (a traced scalar or pytree) to an optax
      transformation.
    data: arrays `train_x`, `train_y`, `test_x`, `test_y`.
    keys: [S] PRNG keys, one model each (its init and its batches).
    num_steps: T.
    hypers: a pytree whose leaves lead with an [H] axis, vmapped over
      (learning rates; or theta with a unit axis).
    eval_params: `lopt.tasks.inner.train_model`'s: where the test scores are
      taken (None: the final parameters).

  Returns:
    numpy arrays `losses` [H, S, T], `test_accuracy` and `test_loss` [H, S].
  """

  def run(data, keys, h):
    tx = make_tx(h)
    return jax.vmap(
      lambda k: inner.train_model(
        task, tx, data, k, num_steps, eval_params=eval_params
      )
    )(keys)

  out = jax.jit(jax.vmap(run, in_axes=(None, None, 0)))(data, keys, hypers)
  return jax.tree.map(np.asarray, out)


def load_data(spec: SuiteTask, data_dir: str | None = None):
  """`(arrays, dataset)`: the arrays `train_models` reads, on the devices,
  and the host-side `Dataset` of the task's dataset and image size."""
  ds = data_lib.load_dataset(
    spec.dataset, data_dir=data_dir, image_size=spec.image_size
  )
  arrays = {
    "train_x": ds.train.images,
    "train_y": ds.train.labels,
    "test_x": ds.test.images,
    "test_y": ds.test.labels,
  }
  return jax.device_put(arrays), ds


def choose_best(sweep: Sequence[dict]) -> int:
  """Index of the config with the lowest seed-mean training loss.

  A config with any non-finite run has a non-finite mean and is never
  chosen while a finite one exists.
  """

  return suite_metrics.lowest_mean(
    [e["per_seed"]["mean_train_loss"] for e in sweep]
  )


def run_adam_grid(spec, task, data, keys, learning_rates, schedules) -> dict:
  """Trains Adam over the grid; the cached content of one task.

  Returns:
    `sweep` (per config: schedule, learning_rate, per-seed scores),
    `best` (its index) and `best_curve` (the best config's seed-mean
    training loss per step).
  """
  sweep, curves = [], []
  lrs = jnp.asarray(learning_rates, jnp.float32)
  for schedule in schedules:
    out = train_models(
      task,
      lambda lr, s=schedule: adam(lr, spec.horizon, s),
      data,
      keys,
      spec.horizon,
      lrs,
    )
    for h, lr in enumerate(learning_rates):
      entry = {"schedule": schedule, "learning_rate": lr}
      sweep.append(dict(entry, per_seed=suite_metrics.per_seed_scores(out, h)))
      curves.append(out["losses"][h].mean(0))
  best = choose_best(sweep)
  return {"sweep": sweep, "best": best, "best_curve": curves[best]}


# -- the Adam cache -------------------------------------------------------------


def adam_cache_key(spec: SuiteTask, seeds, learning_rates, schedules) -> str:
  """The hash that names a task's cache file (see the module docstring)."""
  key = {
    "version": ADAM_CACHE_VERSION,
    "spec": spec.key(),
    "seeds": [int(s) for s in seeds],
    "learning_rates": [float(x) for x in learning_rates],
    "schedules": list(schedules),
  }
  text = json.dumps(key, sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:20]


def baseline_cache_key(spec: SuiteTask, seeds, name: str) -> str:
  """The hash that names a baseline's cache file for a task."""
  key = {
    "version": BASELINE_CACHE_VERSION,
    "baseline": name,
    "optax": optax.__version__,
    "spec": spec.key(),
    "seeds": [int(s) for s in seeds],
  }
  text = json.dumps(key, sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:20]


def _array(vals) -> np.ndarray:
  """A cached JSON list back to an array (null = non-finite: NaN)."""
  return np.asarray([np.nan if v is None else v for v in vals], np.float64)


def _from_json(obj):
  """Cached Adam JSON back to arrays."""
  for entry in obj["sweep"]:
    entry["per_seed"] = {k: _array(v) for k, v in entry["per_seed"].items()}
  obj["best_curve"] = _array(obj["best_curve"])
  return obj


def _baseline_from_json(obj):
  """Cached baseline JSON back to arrays."""
  obj["per_seed"] = {k: _array(v) for k, v in obj["per_seed"].items()}
  obj["curve"] = _array(obj["curve"])
  return obj


def _cached(cache_dir, stem: str, digest: str, compute, decode) -> dict:
  """`compute()` (a dict), or its cached copy `{stem}-{digest}.json` in
  `cache_dir` (None: no cache) decoded by `decode`; `cached` says which."""
  path = None
  if cache_dir:
    path = os.path.join(os.path.expanduser(cache_dir), f"{stem}-{digest}.json")
    try:
      with open(path) as f:
        cached = json.load(f)
      if cached.get("key") == digest:
        return dict(decode(cached), cached=True)
    except (OSError, ValueError, KeyError, TypeError):
      pass  # missing or unreadable: recompute and overwrite
  start = time.perf_counter()
  result = compute()
  result["seconds"] = time.perf_counter() - start
  if path:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    jsonio.dump(dict(result, key=digest), tmp)
    os.replace(tmp, path)  # whole files only, even with two writers
  return dict(result, cached=False)


def tuned_adam(spec, task, data, seeds, grid, cache_dir) -> dict:
  """`run_adam_grid`'s result for the task, from the cache when it is there."""
  learning_rates, schedules = grid
  return _cached(
    cache_dir,
    spec.name,
    adam_cache_key(spec, seeds, learning_rates, schedules),
    lambda: run_adam_grid(
      spec, task, data, task_keys(seeds), learning_rates, schedules
    ),
    _from_json,
  )


def run_baseline(spec, task, data, keys, name: str) -> dict:
  """Trains baseline `name` of `lopt.suite.baselines.BASELINES`.

  Returns:
    `name`, `per_seed` (scores, as a sweep entry's) and `curve` (the
    seed-mean training loss per step).
  """
  factory = baselines_lib.BASELINES[name]
  out = train_models(
    task,
    lambda _: factory(spec.horizon),
    data,
    keys,
    spec.horizon,
    jnp.zeros((1,)),
    eval_params=baselines_lib.eval_params,
  )
  return {
    "name": name,
    "per_seed": suite_metrics.per_seed_scores(out, 0),
    "curve": out["losses"][0].mean(0),
  }


def baseline(spec, task, data, seeds, name: str, cache_dir) -> dict:
  """`run_baseline`'s result for the task, from the cache when it is there."""
  return _cached(
    cache_dir,
    f"{spec.name}-{name}",
    baseline_cache_key(spec, seeds, name),
    lambda: run_baseline(spec, task, data, task_keys(seeds), name),
    _baseline_from_json,
  )


# -- the runner ---------------------------------------------------------------


def _learned_factory(learned) -> tuple[Any, Callable, str]:
  """(theta, make_tx(theta, num_steps), label) for any accepted `learned`."""
  if isinstance(learned, (str, os.PathLike)):
    theta, cfg, _ = export.load_theta(os.fspath(learned))
    return (
      theta,
      lambda th, n: optimizers.learned_optimizer(th, cfg, n),
      str(learned),
    )
  if isinstance(learned, tuple):
    theta, cfg = learned
    return (
      theta,
      lambda th, n: optimizers.learned_optimizer(th, cfg, n),
      "theta",
    )
  if callable(learned):  # theta: a dummy to vmap over
    name = getattr(learned, "__name__", "tx")
    return jnp.zeros(()), lambda _, n: learned(n), name
  raise TypeError(f"Cannot evaluate {type(learned).__name__}: {learned!r}")


def evaluate_suite(
  learned,
  suite: str | Suite,
  *,
  output: str | None = None,
  adam_cache_dir: str | None = DEFAULT_ADAM_CACHE_DIR,
  data_dir: str | None = None,
  learning_rates: Sequence[float] | None = None,
  schedules: Sequence[str] | None = None,
  baselines: Sequence[str] = tuple(baselines_lib.BASELINES),
  num_bootstrap: int = suite_metrics.NUM_BOOTSTRAP,
) -> dict:
  """Scores a learned optimizer on a suite against tuned Adam and baselines.

  Args:
    learned: a meta-training workdir or checkpoint dir; a `(theta,
      LOptConfig)` pair; or a function `num_steps -> optax transformation`.
    suite: a name of `lopt.suite.tasks.SUITES` or a `Suite`.
    output: directory for `suite_<name>.{json,md,png}`; None writes nothing
      (a workdir `learned` defaults it to the workdir).
    adam_cache_dir: where tuned-Adam and baseline results are cached; None
      or "" = off.
    data_dir: the tfds data directory (default:
      `lopt.tasks.data.default_data_dir()`).
    learning_rates: Adam's grid; by default the suite's, else
      `LEARNING_RATES`.
    schedules: Adam's schedules, of `SCHEDULES`; by default the suite's,
      else all of them.
    baselines: names of `lopt.suite.baselines.BASELINES` to train too.
    num_bootstrap: bootstrap resamples of the aggregates' intervals.

  Returns:
    The JSON content: `tasks` (see `score_task`), `aggregates`, the grid,
    seeds and timings; plus `outputs` (the written paths) when written.
  """
  suite = SUITES[suite] if isinstance(suite, str) else suite
  learning_rates = learning_rates or suite.learning_rates or LEARNING_RATES
  schedules = schedules or suite.schedules or SCHEDULES
  unknown = set(baselines) - set(baselines_lib.BASELINES)
  if unknown:
    raise ValueError(
      f"Unknown baselines {sorted(unknown)}; "
      f"valid: {list(baselines_lib.BASELINES)}"
    )
  theta, make_tx, label = _learned_factory(learned)
  if output is None and isinstance(learned, (str, os.PathLike)):
    output = os.fspath(learned)
  keys = task_keys(suite.seeds)
  datasets, scored, start = {}, [], time.perf_counter()
  progress = console.Progress(len(suite.tasks), f"suite {suite.name}", 100)
  for spec in suite.tasks:
    progress.step(spec.name)
    where = (spec.dataset, spec.image_size)
    if where not in datasets:
      datasets[where] = load_data(spec, data_dir)
    data, ds = datasets[where]
    task = build_task(spec, ds.image_shape, ds.num_classes, ds.kind)
    t0 = time.perf_counter()
    lrn = train_models(
      task,
      lambda th, n=spec.horizon: make_tx(th, n),
      data,
      keys,
      spec.horizon,
      jax.tree.map(lambda x: jnp.asarray(x)[None], theta),
    )
    t1 = time.perf_counter()
    adam_ = tuned_adam(
      spec, task, data, suite.seeds, (learning_rates, schedules), adam_cache_dir
    )
    t2 = time.perf_counter()
    base = {
      name: baseline(spec, task, data, suite.seeds, name, adam_cache_dir)
      for name in baselines
    }
    scored.append(
      suite_metrics.score_task(spec, lrn, adam_, learning_rates, base)
    )
    scored[-1]["seconds"] = {
      "learned": t1 - t0,
      "adam": 0.0 if adam_["cached"] else t2 - t1,
      "baselines": sum(
        0.0 if b["cached"] else b["seconds"] for b in base.values()
      ),
    }
    scored[-1]["num_params"] = sum(
      math.prod(x.shape)
      for x in jax.tree.leaves(jax.eval_shape(task.init, keys[0]))
    )
  summary = {
    "suite": suite.name,
    "description": suite.description,
    "learned": label,
    "seeds": list(suite.seeds),
    "adam_grid": {
      "learning_rates": list(learning_rates),
      "schedules": list(schedules),
      "cache_version": ADAM_CACHE_VERSION,
    },
    "baselines": {
      "names": list(baselines),
      "tuning_free": [b for b in baselines if b in baselines_lib.TUNING_FREE],
      "cache_version": BASELINE_CACHE_VERSION,
      "optax": optax.__version__,
    },
    "tasks": scored,
    "aggregates": suite_metrics.aggregate(scored, num_bootstrap),
    "seconds": time.perf_counter() - start,
  }
  if output:
    summary["outputs"] = suite_report.write_outputs(summary, output)
  return summary
