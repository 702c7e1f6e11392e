"""Online ES gradient estimators for unrolled computation graphs.

Each one works on any `lopt.systems.UnrolledSystem` through the same three
calls, so meta-training, `lopt.compare` and the tests swap one for another
by name (`REGISTRY`, `make`):

    est = estimators.NRES(system, num_particles=N, unroll_length=W, sigma=s)
    state = est.init(theta, key)
    grad, state, info = est.estimate(theta, state, key)

| class        | unbiased for                | per-particle memory | sequential steps / update |
|--------------|-----------------------------|---------------------|---------------------------|
| NRES         | Gaussian smoothing of L     | 2 states + eps      | W                         |
| PES          | per-W-block smoothing of L  | 2 states + eps + xi | W                         |
| GPES(K)      | per-K-block smoothing of L  | 2 states + eps + xi | W                         |
| FullES       | Gaussian smoothing of L     | none (2 states live)| T                         |
| TruncatedES  | biased (window-local)       | 1 state             | W                         |
| TBPTT        | biased (window-local)       | 1 state + W tape    | W                         |
"""

import inspect
from typing import Any

from lopt.estimators import base
from lopt.estimators.base import Estimator, ParticleMap, vmap_particles
from lopt.estimators.full_es import FullES
from lopt.estimators.gpes import GPES, NRES, PES, GPESState
from lopt.estimators.truncated import TBPTT, TruncatedES, TruncatedState

#: Config names of the estimators, as `estimator.name` spells them.
REGISTRY: dict[str, type[Estimator]] = {
  "nres": NRES,
  "pes": PES,
  "gpes": GPES,
  "tes": TruncatedES,
  "full_es": FullES,
  "tbptt": TBPTT,
}


#: The config-style settings, and what each allows. An estimator takes the
#: ones its constructor names (FullES no unroll_length, TBPTT no sigma, only
#: GPES a noise_period) and requires those without a default.
_ALLOWED = {
  "num_particles": "an integer >= 1",
  "unroll_length": "an integer in [1, T]",
  "sigma": "a finite number > 0",
  "noise_period": "an integer >= estimator.unroll_length",
  "step_unlocked": "True or False",
}


def _unless_none(check, value, *args):
  return None if value is None else check(value, *args)


def check_settings(
  name: str,
  *,
  horizon: int,
  num_particles: int,
  unroll_length: int | None,
  sigma: float | None = None,
  noise_period: int | None = None,
  step_unlocked: bool = True,
) -> dict[str, Any]:
  """Validates config-style estimator settings, without a system.

  Every given setting is checked, also one that the named estimator ignores
  (a negative noise_period is an error for nres too): N >= 1, W in [1, T],
  sigma a finite number > 0, K >= 1 (>= W for gpes), step_unlocked a bool.
  `None` means not given; so does a noise_period of 0, the configs' "unset".
  The checks are the ones the constructors run, with the same messages.

  Args:
    name: the estimator's config name, a key of `REGISTRY`.
    horizon: T, the inner episode length the estimator will run on.
    num_particles: `estimator.num_particles`.
    unroll_length: `estimator.unroll_length`; may be None for full_es.
    sigma: `estimator.sigma`; required by all but tbptt.
    noise_period: `estimator.noise_period`; required by gpes.
    step_unlocked: `estimator.step_unlocked`.

  Returns:
    The keyword arguments that `REGISTRY[name]`'s constructor takes, checked
    and normalised (what `make` passes to it along with the system).

  Raises:
    ValueError: for an unknown name (listing the valid ones), a missing
      required setting, or an invalid one (naming the field `estimator.<x>`,
      the value, and what is allowed).
  """
  if name not in REGISTRY:
    raise ValueError(
      f"estimator.name must be one of {sorted(REGISTRY)}, got {name!r}"
    )
  horizon = base.check_horizon(horizon, "horizon")
  if noise_period == 0:
    noise_period = None  # the configs' "unset"
  given = {
    "num_particles": base.check_num_particles(num_particles),
    "unroll_length": _unless_none(
      base.check_unroll_length, unroll_length, horizon
    ),
    "sigma": _unless_none(base.check_sigma, sigma),
    "noise_period": _unless_none(base.check_noise_period, noise_period),
    "step_unlocked": base.check_flag("estimator.step_unlocked", step_unlocked),
  }
  parameters = inspect.signature(REGISTRY[name]).parameters
  kwargs = {}
  for field, allowed in _ALLOWED.items():
    if field not in parameters:
      continue
    if given[field] is not None:
      kwargs[field] = given[field]
    elif parameters[field].default is inspect.Parameter.empty:
      raise ValueError(f"estimator.{field} is required for {name} ({allowed})")
  if "noise_period" in kwargs:
    base.check_noise_period(kwargs["noise_period"], kwargs["unroll_length"])
  return kwargs


def make(
  name: str,
  system,
  *,
  num_particles: int,
  unroll_length: int | None,
  sigma: float | None = None,
  noise_period: int | None = None,
  step_unlocked: bool = True,
  particle_map: ParticleMap | None = None,
) -> Estimator:
  """Builds an estimator from config-style arguments.

  The arguments are validated by `check_settings` (against the system's
  horizon); those the estimator does not take are checked, then ignored.

  Args:
    name: a key of `REGISTRY`.
    system: the unrolled system.
    num_particles, unroll_length, sigma, noise_period, step_unlocked: the
      `estimator.*` settings, as `check_settings` takes them.
    particle_map: how the window runs over the particles (see
      `Estimator`); None for the default, `vmap_particles`.

  Raises:
    ValueError: as `check_settings`.
  """
  kwargs = check_settings(
    name,
    horizon=getattr(system, "horizon", None),
    num_particles=num_particles,
    unroll_length=unroll_length,
    sigma=sigma,
    noise_period=noise_period,
    step_unlocked=step_unlocked,
  )
  if particle_map is not None:
    kwargs["particle_map"] = particle_map
  return REGISTRY[name](system, **kwargs)


__all__ = [
  "Estimator",
  "FullES",
  "GPES",
  "GPESState",
  "NRES",
  "PES",
  "ParticleMap",
  "REGISTRY",
  "TBPTT",
  "TruncatedES",
  "TruncatedState",
  "check_settings",
  "make",
  "vmap_particles",
]
