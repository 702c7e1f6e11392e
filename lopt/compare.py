"""Compare gradient estimators under one budget: meta-loss vs time and steps.

    python -m lopt.compare --config=configs/lorenz.py \
        --estimators=nres,pes,tes,full_es,tbptt --budget_steps=8e7 \
        --seeds=0,1,2 --output_dir=docs/figures
    python -m lopt.compare --config=configs/default.py \
        --estimators=nres,pes,tes --budget_outer_steps=200 \
        --workdir=/tmp/lopt_compare --output_dir=docs/figures

Every estimator starts from the same theta (for a given seed) and runs until
its budget is spent: `--budget_seconds` (wall-clock of the timed region),
`--budget_steps` (total inner unroll steps, the sum of the estimator's
`info["steps"]`: every antithetic member counted) or `--budget_outer_steps`.
Writes `<name>.json` and `<name>.png` into `--output_dir`: the meta-loss of
every (estimator, seed) run against wall-clock seconds and against inner
steps, and a plot of the mean over seeds with the min-max band. Estimator
labels are estimator names or names that `config.overrides.<label>` maps to
one with its own settings (e.g. `tbptt_w10`, or per-estimator learning
rates).

Two kinds of config:

* Toy systems (a config with a `system` section, e.g. configs/lorenz.py,
  configs/influence_balancing.py). Outer steps run in chunks, each one
  jitted `lax.fori_loop` over `outer.outer_step` with a dynamic trip count,
  so there is no Python loop per step and the chunk lengths can follow the
  budget without recompiling. Only the chunks are timed (after compiling
  them, and after the estimator's burn-in). The meta-loss curve is the
  *unperturbed* objective at the current theta, evaluated after every chunk
  outside the timed region: the loss of whole episodes of `config.eval`'s
  test system (for Lorenz: the mean per-step loss of T steps, averaged over
  `eval.num_inits` test initial conditions drawn around the training start;
  for influence balancing: the loss after a fresh 500-step unroll). This is
  the NRES paper's protocol: evaluation never counts as training time.

* Learned-optimizer configs (configs/default.py and the like: a config with
  a `task` section). Each (estimator, seed) runs `train.train_and_evaluate`
  in its own workdir with `estimator.name` and `seed` changed and a budget in
  outer steps; it checkpoints theta every interval and evaluates nothing in
  the loop. Afterwards every checkpointed theta is scored, outside the timed
  region, with the same function as the run's own evaluation
  (`eval/learned/mean_train_loss`: fresh models trained for T steps on the
  held-out eval seeds, mean training loss). Wall-clock comes from the run's
  `outer_steps_per_sec` log lines (so it includes the loop's own
  checkpoint saves, one per interval); the first log window, which includes
  XLA compilation, is counted at the rate of the second. A finished run of
  the same config already in the workdir is reused, not rerun.

Steps and seconds exclude the estimator's burn-in (the T-step warm-up of
step-unlocked particles in `init`); the JSON records its cost separately as
`burn_in_steps` (and `burn_in_seconds` for toy systems).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags, logging
from jax.flatten_util import ravel_pytree
from ml_collections import config_flags

from lopt import estimators, outer, systems

#: Toy systems a config may name in `system.name`.
SYSTEMS = {
  "lorenz": systems.Lorenz,
  "influence_balancing": systems.InfluenceBalancing,
  "linear_quadratic": systems.LinearQuadratic,
  "toy_regression": systems.ToyRegression,
}
#: Fields of `config.estimator` (and of a per-estimator override).
ESTIMATOR_FIELDS = (
  "name",
  "num_particles",
  "unroll_length",
  "sigma",
  "noise_period",
  "step_unlocked",
)
#: Fields of `config.outer` (and of a per-estimator override).
OUTER_FIELDS = ("optimizer", "learning_rate", "decay_steps", "decay_factor")
#: What the JSON says the meta-loss is, per kind of config.
META_LOSS_DEFINITIONS = {
  "toy": (
    "unperturbed objective at the current theta, evaluated outside "
    "the timed region: the {reduce} per-step loss of full episodes "
    "of the test system, averaged over {num_inits} test initial "
    "conditions"
  ),
  "lopt": (
    "eval/learned/mean_train_loss of each checkpointed theta, "
    "evaluated after training: fresh models trained for T steps on "
    "the held-out eval seeds with the learned optimizer, mean "
    "training loss"
  ),
}


@dataclasses.dataclass(frozen=True)
class Budget:
  """How long each (estimator, seed) run goes; 0 means unset.

  Attributes:
    seconds: wall-clock of the timed region (toy systems only).
    steps: total inner unroll steps (sum of `info["steps"]`).
    outer_steps: outer updates.
  """

  seconds: float = 0.0
  steps: float = 0.0
  outer_steps: int = 0

  def __post_init__(self):
    if min(self.seconds, self.steps, self.outer_steps) < 0:
      raise ValueError(f"budgets must be >= 0, got {self}")
    if not (self.seconds or self.steps or self.outer_steps):
      raise ValueError(
        "Give a budget: --budget_seconds, --budget_steps or "
        "--budget_outer_steps (or compare.budget_* in the "
        "config)."
      )

  def spent(self, seconds: float, steps: float, outer_steps: int) -> bool:
    return (
      (self.seconds > 0 and seconds >= self.seconds)
      or (self.steps > 0 and steps >= self.steps)
      or (self.outer_steps > 0 and outer_steps >= self.outer_steps)
    )


def is_toy(config: ml_collections.ConfigDict) -> bool:
  """Whether the config describes a toy system (else a learned optimizer)."""
  return "system" in config


def settings(config: ml_collections.ConfigDict, label: str) -> dict[str, Any]:
  """The estimator and outer settings of one label, overrides applied.

  A label is an estimator name (`nres`, `pes`, ...) or any name that
  `config.overrides.<label>.name` maps to one (e.g. `tbptt_w10`). Fields of
  `config.overrides.<label>` replace those of `config.estimator` and
  `config.outer`.

  Raises:
    ValueError: for a label that names no estimator, or an unknown field.
  """
  merged = {
    k: config.estimator[k] for k in ESTIMATOR_FIELDS if k in config.estimator
  }
  merged.update({k: config.outer[k] for k in OUTER_FIELDS if k in config.outer})
  merged["name"] = label
  overrides = config.get("overrides", None)
  if overrides is not None and label in overrides:
    extra = dict(overrides[label])
    unknown = sorted(set(extra) - set(ESTIMATOR_FIELDS) - set(OUTER_FIELDS))
    if unknown:
      raise ValueError(
        f"overrides.{label} has unknown fields {unknown}; "
        f"allowed: {list(ESTIMATOR_FIELDS + OUTER_FIELDS)}"
      )
    merged.update(extra)
  if merged["name"] not in estimators.REGISTRY:
    raise ValueError(
      f"{label!r} is not an estimator (one of "
      f"{sorted(estimators.REGISTRY)}) and config.overrides.{label}.name "
      f"does not name one"
    )
  merged["label"] = label
  return merged


def make_outer_optimizer(s: dict[str, Any]) -> optax.GradientTransformation:
  """SGD or Adam at `learning_rate`, times `decay_factor` per decay_steps."""
  rate = s["learning_rate"]
  if s.get("decay_steps"):
    rate = optax.exponential_decay(
      s["learning_rate"],
      transition_steps=s["decay_steps"],
      decay_rate=s.get("decay_factor", 1.0),
      staircase=True,
    )
  builders = {"sgd": optax.sgd, "adam": optax.adam}
  if s["optimizer"] not in builders:
    raise ValueError(
      f"outer.optimizer must be one of {sorted(builders)}, "
      f"got {s['optimizer']!r}"
    )
  return builders[s["optimizer"]](rate)


def make_system(config: ml_collections.ConfigDict, **changes):
  """The toy system of `config.system`, with `changes` applied."""
  fields = dict(config.system)
  name = fields.pop("name")
  if name not in SYSTEMS:
    raise ValueError(
      f"system.name must be one of {sorted(SYSTEMS)}, got {name!r}"
    )
  fields.update(changes)
  fields = {
    k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()
  }
  return SYSTEMS[name](**fields)


def make_estimator(system, s: dict[str, Any]) -> estimators.Estimator:
  return estimators.make(
    s["name"],
    system,
    num_particles=s["num_particles"],
    unroll_length=s["unroll_length"],
    sigma=s.get("sigma"),
    noise_period=s.get("noise_period") or None,
    step_unlocked=s.get("step_unlocked", True),
  )


def steps_per_update(est: estimators.Estimator) -> int:
  """Inner steps one `estimate` call takes: what `info["steps"]` reports."""
  return est.members * est.num_particles * est.unroll_length


def burn_in_steps(est: estimators.Estimator) -> int:
  """Inner steps of `init`'s burn-in (T steps of every member), or 0."""
  if isinstance(est, estimators.FullES) or not est.step_unlocked:
    return 0
  return est.members * est.num_particles * est.horizon


def make_evaluator(config: ml_collections.ConfigDict):
  """A jitted theta -> unperturbed meta-loss on the toy test system.

  The test system is `config.system` with `config.eval.system` applied; it
  runs one whole episode (`eval.horizon` steps, default its own horizon)
  from each of `eval.num_inits` fixed initial conditions, and the loss is
  the mean (or, with `eval.reduce = 'last'`, the final) per-step loss,
  averaged over the initial conditions.
  """
  ev = config.eval
  system = make_system(config, **dict(ev.get("system", {})))
  horizon = ev.get("horizon", 0) or system.horizon
  keys = jax.random.split(
    jax.random.key(ev.get("seed", 12345)), ev.get("num_inits", 1)
  )
  reduce = ev.get("reduce", "mean")
  if reduce not in ("mean", "last"):
    raise ValueError(f"eval.reduce must be 'mean' or 'last', got {reduce!r}")

  def episode(theta, key):
    def body(state, inputs):
      t, step_key = inputs
      return system.step(theta, state, t, step_key)

    k_init, k_steps = jax.random.split(key)
    ts = jnp.arange(horizon, dtype=jnp.int32) % system.horizon
    _, losses = jax.lax.scan(
      body, system.init(k_init), (ts, jax.random.split(k_steps, horizon))
    )
    return jnp.mean(losses) if reduce == "mean" else losses[-1]

  return jax.jit(
    lambda theta: jnp.mean(jax.vmap(episode, in_axes=(None, 0))(theta, keys))
  )


def _flat(theta) -> list[float]:
  return [float(x) for x in np.ravel(np.asarray(ravel_pytree(theta)[0]))]


def _finite_or_none(x: float) -> float | None:
  return float(x) if math.isfinite(x) else None


class ToyRunner:
  """One estimator on a toy system, compiled once and run for any seed.

  Attributes:
    label: the estimator label.
    estimator: the estimator.
    settings: its resolved settings (see `settings`).
    compile_seconds: time spent compiling the burn-in and the chunk.
  """

  def __init__(self, config: ml_collections.ConfigDict, label: str):
    self.config = config
    self.label = label
    self.settings = settings(config, label)
    self.estimator = est = make_estimator(make_system(config), self.settings)
    self.optimizer = opt = make_outer_optimizer(self.settings)
    self.theta0 = jnp.asarray(config.theta_init, jnp.float32)

    def init(theta, key):
      return outer.init(est, opt, theta, key)

    def chunk(state, key, start, num):
      """`num` outer steps from outer step `start`; sums of their infos."""

      def body(i, carry):
        state, sums = carry
        state, info = outer.outer_step(
          est, opt, state, jax.random.fold_in(key, start + i)
        )
        sums = {
          "loss": sums["loss"] + info["loss"],
          "steps": sums["steps"] + info["steps"].astype(jnp.float32),
          "nonfinite": sums["nonfinite"] + info["nonfinite"],
          "skipped": sums["skipped"] + (~info["applied"]).astype(jnp.int32),
        }
        return state, sums

      zeros = {
        "loss": jnp.zeros(()),
        "steps": jnp.zeros(()),
        "nonfinite": jnp.zeros((), jnp.int32),
        "skipped": jnp.zeros((), jnp.int32),
      }
      return jax.lax.fori_loop(0, num, body, (state, zeros))

    t0 = time.perf_counter()
    key = jax.random.key(0)
    self._init = jax.jit(init).lower(self.theta0, key).compile()
    state = jax.eval_shape(init, self.theta0, key)
    self._chunk = (
      jax.jit(chunk).lower(state, key, jnp.int32(0), jnp.int32(1)).compile()
    )
    self.compile_seconds = time.perf_counter() - t0

  def run(self, seed: int, budget: Budget, evaluate) -> dict[str, Any]:
    """Meta-trains from `config.theta_init` with one seed; see `run_toy`."""
    config = self.config
    k_init, k_run = jax.random.split(jax.random.key(seed))
    t0 = time.perf_counter()
    state = jax.block_until_ready(self._init(self.theta0, k_init))
    burn_in_seconds = time.perf_counter() - t0
    per_update = steps_per_update(self.estimator)
    num_points = int(config.eval.get("num_points", 40))
    fixed = _fixed_chunk(config, budget, per_update, num_points)
    curve = {
      "outer_steps": [0],
      "steps": [0],
      "seconds": [0.0],
      "meta_loss": [_finite_or_none(float(evaluate(state.theta)))],
      "train_loss": [None],
      "theta": [_flat(state.theta)],
      "nonfinite": [0],
      "skipped_updates": [0],
    }
    done_outer, done_steps, seconds, chunk_len = 0, 0, 0.0, fixed or 1
    while not budget.spent(seconds, done_steps, done_outer):
      num = chunk_len
      if budget.outer_steps:
        num = min(num, budget.outer_steps - done_outer)
      if budget.steps:
        num = min(num, math.ceil((budget.steps - done_steps) / per_update))
      t0 = time.perf_counter()
      state, sums = self._chunk(
        state, k_run, jnp.int32(done_outer), jnp.int32(num)
      )
      jax.block_until_ready(state)
      elapsed = time.perf_counter() - t0
      # Everything below is outside the timed region.
      seconds += elapsed
      done_outer += num
      done_steps += int(round(float(sums["steps"])))
      curve["outer_steps"].append(done_outer)
      curve["steps"].append(done_steps)
      curve["seconds"].append(seconds)
      curve["meta_loss"].append(_finite_or_none(float(evaluate(state.theta))))
      curve["train_loss"].append(_finite_or_none(float(sums["loss"]) / num))
      curve["theta"].append(_flat(state.theta))
      curve["nonfinite"].append(int(sums["nonfinite"]))
      curve["skipped_updates"].append(int(sums["skipped"]))
      if not fixed:  # a seconds budget: aim at num_points chunks
        rate = max(elapsed / num, 1e-9)
        chunk_len = int(np.clip(budget.seconds / num_points / rate, 1, 4 * num))
        remaining = budget.seconds - seconds
        chunk_len = max(1, min(chunk_len, math.ceil(remaining / rate)))
    logging.info(
      "%s seed %d: %d outer steps, %d inner steps, %.1f s, meta-loss %s",
      self.label,
      seed,
      done_outer,
      done_steps,
      seconds,
      curve["meta_loss"][-1],
    )
    curve.update(
      seed=seed,
      compile_seconds=self.compile_seconds,
      burn_in_seconds=burn_in_seconds,
      burn_in_steps=burn_in_steps(self.estimator),
      steps_per_update=per_update,
    )
    return curve


def run_toy(
  config: ml_collections.ConfigDict,
  label: str,
  seed: int,
  budget: Budget,
  evaluate=None,
) -> dict[str, Any]:
  """Meta-trains one estimator on a toy system; returns its curve.

  Args:
    config: a toy-system config.
    label: the estimator label (see `settings`).
    seed: the seed of the estimator's randomness (theta starts at
      `config.theta_init` whatever the seed).
    budget: when to stop.
    evaluate: theta -> meta-loss; `make_evaluator(config)` by default.

  Returns:
    A dict of lists, one entry per evaluation point (the first is the start):
    `outer_steps`, `steps` (cumulative `info["steps"]`), `seconds` (timed
    region only), `meta_loss` (unperturbed, evaluated untimed), `train_loss`
    (mean `info["loss"]` of the chunk: the perturbed particles' loss),
    `theta`, `nonfinite`, `skipped_updates`; and scalars `seed`,
    `compile_seconds`, `burn_in_seconds`, `burn_in_steps`,
    `steps_per_update`.
  """
  return ToyRunner(config, label).run(
    seed, budget, evaluate or make_evaluator(config)
  )


def _fixed_chunk(
  config, budget: Budget, per_update: int, num_points: int
) -> int:
  """Outer steps per chunk, or 0 to adapt it to a seconds budget."""
  every = float(config.eval.get("every_steps", 0))
  if every:
    return max(1, round(every / per_update))
  if budget.steps:
    return max(1, math.ceil(budget.steps / num_points / per_update))
  if budget.outer_steps:
    return max(1, math.ceil(budget.outer_steps / num_points))
  return 0


# -- learned-optimizer configs ------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Horizon:
  """A system stand-in with only a horizon: enough to size an estimator."""

  horizon: int


def lopt_run_config(
  config: ml_collections.ConfigDict,
  label: str,
  seed: int,
  num_steps: int,
  interval: int,
):
  """The train_and_evaluate config of one (estimator, seed) run."""
  cfg = copy.deepcopy(config)
  cfg.unlock()
  s = settings(config, label)
  for k in ESTIMATOR_FIELDS:
    if k in s and k in cfg.estimator:
      cfg.estimator[k] = s[k]
  for k in ("optimizer", "learning_rate"):
    cfg.outer[k] = s[k]
  cfg.seed = int(seed)
  cfg.outer.num_steps = num_steps
  cfg.checkpoint.every_steps = interval
  cfg.checkpoint.keep = num_steps // interval + 2
  cfg.log.every_steps = interval
  cfg.eval.every_steps = num_steps + 1  # evaluated afterwards, untimed
  for k in ("overrides", "compare"):
    if k in cfg:
      del cfg[k]
  return cfg


def _lopt_budget(
  config, budget: Budget, label: str, num_points: int
) -> tuple[int, int]:
  """(outer steps, checkpoint interval), multiples of steps_per_dispatch."""
  from lopt import train  # pylint: disable=g-import-not-at-top

  if budget.seconds:
    raise ValueError(
      "--budget_seconds needs a toy-system config; for "
      "learned optimizers use --budget_outer_steps or "
      "--budget_steps."
    )
  dispatch = config.outer.steps_per_dispatch
  est = train.make_estimator(
    lopt_run_config(config, label, 0, dispatch, dispatch),
    _Horizon(config.inner.horizon),
  )
  outer_steps = budget.outer_steps or math.ceil(
    budget.steps / steps_per_update(est)
  )
  if budget.outer_steps and budget.steps:
    outer_steps = min(
      outer_steps, math.ceil(budget.steps / steps_per_update(est))
    )
  outer_steps = dispatch * max(1, math.ceil(outer_steps / dispatch))
  every = int(config.get("compare", {}).get("eval_every_outer_steps", 0))
  if not every:
    every = math.ceil(outer_steps / num_points)
  interval = dispatch * max(1, round(every / dispatch))
  return outer_steps, min(interval, outer_steps)


def run_lopt(
  config: ml_collections.ConfigDict,
  label: str,
  seed: int,
  budget: Budget,
  workdir: str,
) -> dict[str, Any]:
  """Meta-trains a learned optimizer with one estimator; returns its curve.

  Runs `train.train_and_evaluate` in `workdir` (reusing a finished run
  there), then scores every checkpoint's theta. See the module docstring.
  """
  # pylint: disable=g-import-not-at-top
  from lopt import checkpoint, export, metrics, optimizers, train

  num_points = int(config.get("compare", {}).get("num_points", 10))
  num_steps, interval = _lopt_budget(config, budget, label, num_points)
  cfg = lopt_run_config(config, label, seed, num_steps, interval)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  finished = False
  if os.path.isdir(ckpt_dir):  # reuse only a finished run of this config
    try:
      meta, saved = checkpoint.load_meta(ckpt_dir)
      finished = int(np.asarray(meta["step"])) == num_steps and saved.get(
        "config"
      ) == json.loads(cfg.to_json())
    except (FileNotFoundError, ValueError, KeyError):
      finished = False
  if finished:
    logging.info("Reusing the finished run in %s", workdir)
  else:
    shutil.rmtree(workdir, ignore_errors=True)
    train.train_and_evaluate(cfg, workdir)
  rows = metrics.read_metrics(workdir)

  # Wall-clock of the training loop from its own throughput log.
  logged = {}
  for row in rows:  # a resumed run repeats steps: keep the last line
    if "outer_steps_per_sec" in row:
      logged[row["step"]] = row
  log_steps = sorted(logged)
  windows = []
  previous = 0
  for step in log_steps:
    windows.append(
      (step, (step - previous) / logged[step]["outer_steps_per_sec"])
    )
    previous = step
  if len(windows) > 1:  # the first window includes compilation
    first_steps = windows[0][0]
    windows[0] = (
      first_steps,
      first_steps / logged[log_steps[1]]["outer_steps_per_sec"],
    )
  seconds = dict(zip(log_steps, np.cumsum([w[1] for w in windows])))
  seconds[0] = 0.0

  # Every checkpointed theta, scored like the run's own evaluation.
  data, dataset = train.load_data(cfg)
  exp = train.build(cfg, dataset)
  keys = train.eval_keys(cfg)
  horizon = cfg.inner.horizon

  @jax.jit
  def score(data, theta):
    tx = optimizers.learned_optimizer(theta, exp.lopt, horizon)
    return jnp.mean(train.evaluate_optimizer(exp, data, tx, keys)["losses"])

  with checkpoint.Checkpointer(
    ckpt_dir, every_steps=1, keep=cfg.checkpoint.keep
  ) as ckpt:
    ckpt_steps = [s for s in ckpt.all_steps() if s in seconds]
  initial = [
    r for r in rows if r["step"] == 0 and "eval/learned/mean_train_loss" in r
  ]
  points = [
    (0, initial[-1]["eval/learned/mean_train_loss"] if initial else None)
  ]
  for step in ckpt_steps:
    theta, _, _ = export.load_theta(workdir, step)
    points.append((step, float(score(data, theta))))
  est = train.make_estimator(cfg, _Horizon(horizon))
  per_update = steps_per_update(est)
  train_loss = {s: logged[s]["meta_loss"] for s in log_steps}
  return {
    "seed": seed,
    "workdir": workdir,
    "outer_steps": [p[0] for p in points],
    "steps": [p[0] * per_update for p in points],
    "seconds": [float(seconds[p[0]]) for p in points],
    "meta_loss": [
      None if p[1] is None else _finite_or_none(p[1]) for p in points
    ],
    "train_loss": [train_loss.get(p[0]) for p in points],
    "grad_snr": [
      logged[p[0]].get("grad_snr") if p[0] in logged else None for p in points
    ],
    "burn_in_steps": burn_in_steps(est),
    "steps_per_update": per_update,
  }


# -- the comparison, its JSON and its plot ------------------------------------


def compare(
  config: ml_collections.ConfigDict,
  labels: Sequence[str],
  seeds: Sequence[int],
  budget: Budget,
  workdir: str | None = None,
) -> dict[str, Any]:
  """Runs every (label, seed) and returns the JSON-able comparison.

  Args:
    config: a toy-system or learned-optimizer config.
    labels: estimator labels, e.g. ["nres", "pes", "tes"].
    seeds: seeds; each label runs once per seed.
    budget: per-run budget.
    workdir: learned-optimizer configs only: where the runs' workdirs go
      (`<workdir>/<label>/seed<k>`); a temporary directory by default.

  Returns:
    {"kind", "budget", "meta_loss_definition", "labels", "seeds", "config",
    "estimators": {label: {"settings", "runs": [curve per seed],
    "summary"}}}.
  """
  toy = is_toy(config)
  result = {
    "kind": "toy" if toy else "lopt",
    "budget": dataclasses.asdict(budget),
    "labels": list(labels),
    "seeds": [int(s) for s in seeds],
    "config": json.loads(config.to_json_best_effort()),
    "estimators": {},
  }
  if toy:
    ev = config.eval
    result["meta_loss_definition"] = META_LOSS_DEFINITIONS["toy"].format(
      reduce="final" if ev.get("reduce", "mean") == "last" else "mean",
      num_inits=ev.get("num_inits", 1),
    )
    evaluate = make_evaluator(config)
  else:
    result["meta_loss_definition"] = META_LOSS_DEFINITIONS["lopt"]
    workdir = workdir or tempfile.mkdtemp(prefix="lopt_compare_")
  for label in labels:
    s = settings(config, label)
    runs = []
    runner = ToyRunner(config, label) if toy else None
    for seed in seeds:
      logging.info("Running %s (%s), seed %d", label, s["name"], seed)
      if toy:
        runs.append(runner.run(int(seed), budget, evaluate))
      else:
        runs.append(
          run_lopt(
            config,
            label,
            int(seed),
            budget,
            os.path.join(workdir, label, f"seed{seed}"),
          )
        )
    result["estimators"][label] = {
      "settings": s,
      "runs": runs,
      "summary": summarize(runs),
    }
  if toy and "theta_true" in config:
    result["theta_true"] = [float(x) for x in np.ravel(config.theta_true)]
  return result


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
  """Final values over seeds: mean, std, min, max."""

  def stats(values):
    values = np.asarray(
      [np.nan if v is None else v for v in values], np.float64
    )
    finite = values[np.isfinite(values)]
    if finite.size == 0:
      return {
        "mean": None,
        "std": None,
        "min": None,
        "max": None,
        "num_finite": 0,
      }
    return {
      "mean": float(finite.mean()),
      "std": float(finite.std()),
      "min": float(finite.min()),
      "max": float(finite.max()),
      "num_finite": int(finite.size),
    }

  summary = {
    "final_meta_loss": stats([r["meta_loss"][-1] for r in runs]),
    "best_meta_loss": stats(
      [
        np.nanmin(
          np.asarray(
            [np.nan if v is None else v for v in r["meta_loss"]], np.float64
          )
        )
        for r in runs
      ]
    ),
    "total_steps": stats([r["steps"][-1] for r in runs]),
    "total_seconds": stats([r["seconds"][-1] for r in runs]),
    "total_outer_steps": stats([r["outer_steps"][-1] for r in runs]),
  }
  if "theta" in runs[0]:
    thetas = np.asarray([r["theta"][-1] for r in runs], np.float64)
    summary["final_theta_mean"] = [
      _finite_or_none(x) for x in thetas.mean(axis=0)
    ]
    summary["final_theta_std"] = [
      _finite_or_none(x) for x in thetas.std(axis=0)
    ]
  return summary


def band(
  runs: list[dict[str, Any]],
  x_key: str,
  y_key: str = "meta_loss",
  num: int = 200,
  log_x: bool = False,
):
  """(grid, mean, low, high) of the runs' curves on a common x grid.

  Each seed's curve is interpolated linearly onto a grid up to the smallest
  final x of the seeds (no extrapolation), evenly spaced, or geometrically
  from the smallest positive x with `log_x`; low/high are the min/max over
  seeds. Non-finite values stay NaN.
  """
  end = min(r[x_key][-1] for r in runs)
  if end <= 0:
    grid = np.zeros(1)
  elif log_x:
    first = min(x for r in runs for x in r[x_key] if x > 0)
    grid = np.concatenate([[0.0], np.geomspace(min(first, end), end, num)])
  else:
    grid = np.linspace(0.0, end, num)
  ys = []
  for r in runs:
    x = np.asarray(r[x_key], np.float64)
    y = np.asarray([np.nan if v is None else v for v in r[y_key]], np.float64)
    ys.append(np.interp(grid, x, y))
  ys = np.asarray(ys)
  with np.errstate(all="ignore"):
    return grid, ys.mean(0), ys.min(0), ys.max(0)


def plot(
  result: dict[str, Any],
  path: str,
  title: str = "",
  yscale: str = "log",
  xscale: str = "linear",
  theta_x: str = "steps",
) -> str:
  """Writes the comparison figure; returns its path.

  Panels: meta-loss against inner steps and against wall-clock seconds (mean
  over seeds, min-max band); with a known `theta_true`, a third panel
  against `theta_x` ('steps' or 'outer_steps'): theta itself (scalar theta,
  the truth dashed) or the distance |theta - theta*|.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  truth = (
    np.asarray(result["theta_true"], np.float64)
    if "theta_true" in result
    else None
  )
  scalar = truth is not None and truth.size == 1
  panels = [
    ("steps", "total inner unroll steps"),
    ("seconds", "wall-clock seconds (timed region)"),
  ]
  num_panels = len(panels) + (truth is not None)
  fig, axes = plt.subplots(1, num_panels, figsize=(5.2 * num_panels, 4.2))
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  log_x = xscale == "log"

  def draw(ax, runs, x_key, y_key, color, label, log_x=log_x):
    grid, mean, low, high = band(runs, x_key, y_key, log_x=log_x)
    ax.plot(grid, mean, color=color, label=label)
    if len(runs) > 1:
      ax.fill_between(grid, low, high, color=color, alpha=0.2, lw=0)

  for i, (label, entry) in enumerate(result["estimators"].items()):
    color = colors[i % len(colors)]
    runs = entry["runs"]
    for ax, (x_key, _) in zip(axes, panels):
      draw(ax, runs, x_key, "meta_loss", color, label)
    if truth is not None:
      shown = [
        dict(
          r,
          _theta=[
            float(np.ravel(t)[0])
            if scalar
            else float(np.linalg.norm(np.asarray(t) - truth))
            for t in r["theta"]
          ],
        )
        for r in runs
      ]
      draw(
        axes[-1],
        shown,
        theta_x,
        "_theta",
        color,
        label,
        log_x=log_x and theta_x == "steps",
      )
  num_seeds = len(result["seeds"])
  spread = (
    f"mean of {num_seeds} seeds, band = min..max" if num_seeds > 1 else "1 seed"
  )
  ylabel = (
    "meta-loss (unperturbed theta)"
    if result.get("kind") == "toy"
    else "meta-loss: eval mean train loss"
  )
  for ax, (_, xlabel) in zip(axes, panels):
    ax.set(xlabel=xlabel, ylabel=ylabel, yscale=yscale, xscale=xscale)
  if truth is not None:
    ax = axes[-1]
    if theta_x == "steps":
      ax.set(xlabel="total inner unroll steps", xscale=xscale)
    else:
      ax.set(xlabel="outer steps")
    if scalar:
      ax.axhline(
        float(truth[0]),
        color="k",
        ls="--",
        lw=1,
        label=f"theta* = {float(truth[0]):.4g}",
      )
      ax.set_yscale("symlog", linthresh=1.0)
      ax.set(ylabel="theta (symlog)")
      ax.set_ylim(bottom=min(-1.0, float(truth[0]) - 0.5))
      ax.legend(fontsize="small")
    else:
      ax.set(ylabel="|theta - theta*|", yscale="log")
  for ax in axes:
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize="small")
  fig.suptitle(f"{title} ({spread})" if title else spread)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def write(
  result: dict[str, Any], output_dir: str, name: str, title: str = ""
) -> tuple[str, str]:
  """Writes `<name>.json` and `<name>.png`; returns their paths."""
  os.makedirs(output_dir, exist_ok=True)
  json_path = os.path.join(output_dir, f"{name}.json")
  with open(json_path, "w") as f:
    json.dump(result, f, indent=1, allow_nan=False, default=_json_default)
  config = result.get("config", {})
  plot_cfg = config.get("plot", {}) or {}
  if not title and result.get("kind") == "lopt":
    task = config.get("task", {})
    title = (
      f"Learned-optimizer meta-training, {task.get('dataset')} "
      f"{task.get('model')} {tuple(task.get('hidden', ()))}, "
      f"T = {config.get('inner', {}).get('horizon')}"
    )
  png_path = plot(
    result,
    os.path.join(output_dir, f"{name}.png"),
    title=title or plot_cfg.get("title", name),
    yscale=plot_cfg.get("yscale", "log"),
    xscale=plot_cfg.get("xscale", "linear"),
    theta_x=plot_cfg.get("theta_x", "steps"),
  )
  return json_path, png_path


def _json_default(obj):
  if isinstance(obj, (np.floating, np.integer)):
    return obj.item()
  raise TypeError(f"not JSON-serializable: {type(obj).__name__}")


def format_table(result: dict[str, Any]) -> str:
  """The final numbers per estimator as a Markdown table."""

  def fmt(d: dict[str, Any], spread: bool = True) -> str:
    if d["mean"] is None:
      return "n/a"
    if spread:
      return f"{d['mean']:.4g} ± {d['std']:.2g}"
    return f"{d['mean']:.4g}"

  lines = [
    "| estimator | final meta-loss (mean ± std) | best meta-loss | "
    "outer steps | inner steps | seconds | final theta |",
    "|---|---|---|---|---|---|---|",
  ]
  for label, entry in result["estimators"].items():
    s = entry["summary"]
    theta = s.get("final_theta_mean")
    theta = (
      ""
      if theta is None
      else "("
      + ", ".join("nan" if t is None else f"{t:.4g}" for t in theta)
      + ")"
    )
    lines.append(
      f"| {label} | {fmt(s['final_meta_loss'])} | "
      f"{fmt(s['best_meta_loss'], False)} | "
      f"{fmt(s['total_outer_steps'], False)} | "
      f"{fmt(s['total_steps'], False)} | "
      f"{fmt(s['total_seconds'], False)} | {theta} |"
    )
  return "\n".join(lines)


# -- command line -------------------------------------------------------------


def define_flags() -> dict[str, Any]:
  """Defines the command-line flags; only when run as a program.

  Defining them at import time would clash with other lopt entry points
  (`lopt.main`, `lopt.evaluate`) imported into the same process.
  """
  return {
    "config": config_flags.DEFINE_config_file(
      "config",
      None,
      "A toy-system or learned-optimizer config file.",
      lock_config=False,
    ),
    "estimators": flags.DEFINE_list(
      "estimators",
      None,
      "Estimator labels; default: "
      "config.compare.estimators, else nres,pes,tes.",
    ),
    "seeds": flags.DEFINE_list(
      "seeds", None, "Seeds, e.g. 0,1,2; default: config.compare.seeds, else 0."
    ),
    "budget_seconds": flags.DEFINE_float(
      "budget_seconds", 0.0, "Per-run wall-clock budget (toy systems)."
    ),
    "budget_steps": flags.DEFINE_float(
      "budget_steps", 0.0, "Per-run budget of total inner unroll steps."
    ),
    "budget_outer_steps": flags.DEFINE_integer(
      "budget_outer_steps", 0, "Per-run budget of outer steps."
    ),
    "output_dir": flags.DEFINE_string(
      "output_dir", ".", "Where <name>.json and <name>.png go."
    ),
    "num_points": flags.DEFINE_integer(
      "num_points",
      0,
      "Evaluation points per run (0: the config's "
      "eval.num_points, or 10 for learned-optimizer configs).",
    ),
    "name": flags.DEFINE_string(
      "name", None, "Output file stem; default: the config's stem."
    ),
    "workdir": flags.DEFINE_string(
      "workdir",
      None,
      "Learned-optimizer configs: the runs' workdirs "
      "(<workdir>/<estimator>/seed<k>); a temporary directory by "
      "default. Finished runs there are reused.",
    ),
  }


def main(argv, flag_values: dict[str, Any]):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  f = {k: v.value for k, v in flag_values.items()}
  config = f["config"]
  defaults = config.get("compare", ml_collections.ConfigDict())
  labels = f["estimators"] or list(
    defaults.get("estimators", ("nres", "pes", "tes"))
  )
  seeds = [int(s) for s in (f["seeds"] or defaults.get("seeds", (0,)))]
  if f["budget_seconds"] or f["budget_steps"] or f["budget_outer_steps"]:
    # A budget on the command line replaces the config's.
    budget = Budget(
      seconds=f["budget_seconds"],
      steps=f["budget_steps"],
      outer_steps=f["budget_outer_steps"],
    )
  else:
    budget = Budget(
      seconds=defaults.get("budget_seconds", 0.0),
      steps=defaults.get("budget_steps", 0.0),
      outer_steps=defaults.get("budget_outer_steps", 0),
    )
  if f["num_points"]:
    if is_toy(config):
      config.eval.num_points = f["num_points"]
    else:
      config.compare = ml_collections.ConfigDict(
        dict(defaults, num_points=f["num_points"])
      )
  name = (
    f["name"]
    or os.path.splitext(
      os.path.basename(config_flags.get_config_filename(flags.FLAGS["config"]))
    )[0]
  )
  result = compare(config, labels, seeds, budget, workdir=f["workdir"])
  json_path, png_path = write(result, f["output_dir"], name)
  print(format_table(result))
  print(f"Wrote {json_path} and {png_path}")


if __name__ == "__main__":
  _FLAGS = define_flags()
  flags.mark_flags_as_required(["config"])
  app.run(lambda argv: main(argv, _FLAGS))
