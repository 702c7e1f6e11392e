"""How long each (estimator, seed) run of a comparison goes.

A comparison gives every estimator the same budget, in wall-clock seconds,
inner steps or outer steps; a label of the config may carry its own. Both
runners (`lopt.compare.toy`, `lopt.compare.learned`) read it, so it lives
apart from them and from the command line that builds it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


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

  def scaled(self, factor: float) -> Budget:
    """Every set budget times `factor` (outer steps rounded, at least 1)."""
    if not (factor > 0 and np.isfinite(factor)):
      raise ValueError(f"a budget scale must be a finite number > 0: {factor}")
    return Budget(
      seconds=self.seconds * factor,
      steps=self.steps * factor,
      outer_steps=max(1, round(self.outer_steps * factor))
      if self.outer_steps
      else 0,
    )

  def spent(self, seconds: float, steps: float, outer_steps: int) -> bool:
    return (
      (self.seconds > 0 and seconds >= self.seconds)
      or (self.steps > 0 and steps >= self.steps)
      or (self.outer_steps > 0 and outer_steps >= self.outer_steps)
    )


#: Per-label budget fields of `config.overrides.<label>` -> `Budget` fields.
BUDGET_FIELDS = {
  "budget_seconds": "seconds",
  "budget_steps": "steps",
  "budget_outer_steps": "outer_steps",
}


def label_budget(
  budget: Budget, label_settings: dict[str, Any], scale: float = 1.0
) -> Budget:
  """A label's budget: its own `budget_*` settings if any, else `budget`.

  Either is multiplied by `scale` (`--budget_scale`: a scaled-down run of a
  preset keeps the ratios between the labels' budgets).
  """
  own = {
    field: label_settings[key]
    for key, field in BUDGET_FIELDS.items()
    if label_settings.get(key)
  }
  chosen = Budget(**own) if own else budget
  return chosen if scale == 1.0 else chosen.scaled(scale)
