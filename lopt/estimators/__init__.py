"""Online ES gradient estimators for unrolled computation graphs.

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

from typing import Any

from lopt.estimators.base import Estimator
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


def make(
  name: str,
  system,
  *,
  num_particles: int,
  unroll_length: int,
  sigma: float | None = None,
  noise_period: int | None = None,
  step_unlocked: bool = True,
) -> Estimator:
  """Builds an estimator from config-style arguments.

  Arguments an estimator does not take are ignored (FullES has no
  unroll_length, TBPTT no sigma, only GPES a noise_period).

  Raises:
    ValueError: for an unknown name (listing the valid ones) or an invalid
      argument (naming it and its allowed range).
  """
  if name not in REGISTRY:
    raise ValueError(
      f"estimator.name must be one of {sorted(REGISTRY)}, got {name!r}"
    )
  kwargs: dict[str, Any] = {"num_particles": num_particles}
  if name != "full_es":
    kwargs.update(unroll_length=unroll_length, step_unlocked=step_unlocked)
  if name != "tbptt":
    if sigma is None:
      raise ValueError(f"estimator.sigma is required for {name}")
    kwargs["sigma"] = sigma
  if name == "gpes":
    if noise_period is None:
      raise ValueError("estimator.noise_period is required for gpes")
    kwargs["noise_period"] = noise_period
  return REGISTRY[name](system, **kwargs)


__all__ = [
  "Estimator",
  "FullES",
  "GPES",
  "GPESState",
  "NRES",
  "PES",
  "REGISTRY",
  "TBPTT",
  "TruncatedES",
  "TruncatedState",
  "make",
]
