"""The estimators' argument checks: one clear error per bad value.

Each check returns the value in its canonical type, or raises ValueError
naming the config field, the value and what is allowed. `lopt.validation`
calls them on a config before anything is built, and the estimators on
their constructor arguments, so both say the same thing.
"""

import math
import operator
from collections.abc import Callable
from typing import Any

import numpy as np


def check_int(
  field: str, value: Any, low: int, high: int | None = None, why: str = ""
) -> int:
  """Returns `value` as an int if it is an integer in [low, high], else raises.

  Args:
    field: the name the message gives the value, e.g. `estimator.num_particles`.
    value: the value to check; any integer (`operator.index`) but a bool.
    low: the smallest allowed value.
    high: the largest allowed value; None for no upper bound.
    why: appended to the allowed range in the message, e.g. "(the horizon)".
  """
  bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
  allowed = f"an integer {bounds}" + (f" {why}" if why else "")
  try:
    if isinstance(value, (bool, np.bool_)):
      raise TypeError
    number = operator.index(value)
  except TypeError:
    raise ValueError(f"{field} must be {allowed}, got {value!r}") from None
  if number < low or (high is not None and number > high):
    raise ValueError(f"{field} must be {allowed}, got {number}")
  return number


def check_horizon(value: Any, field: str = "system.horizon") -> int:
  """The horizon T: an integer >= 1."""
  return check_int(field, value, 1)


def check_num_particles(value: Any) -> int:
  """N, the number of particles: an integer >= 1."""
  return check_int("estimator.num_particles", value, 1)


def check_unroll_length(value: Any, horizon: int) -> int:
  """W, the steps per `estimate`: an integer in [1, T]."""
  return check_int(
    "estimator.unroll_length", value, 1, horizon, "(at most the horizon T)"
  )


def check_noise_period(value: Any, unroll_length: int = 1) -> int:
  """K, the steps between noise draws: an integer >= W (GPES), or >= 1.

  Args:
    value: the noise period.
    unroll_length: W when the estimator uses K (GPES needs K >= W, so that
      a window sees at most one block start besides episode starts); 1 to
      check only that a given K is a valid period at all.
  """
  why = f"(at least estimator.unroll_length = {unroll_length})"
  return check_int(
    "estimator.noise_period",
    value,
    unroll_length,
    why=why if unroll_length > 1 else "",
  )


def check_sigma(sigma: Any) -> float:
  """Returns `sigma` as a float if it is a finite number > 0, else raises."""
  message = f"estimator.sigma must be a finite number > 0, got {sigma!r}"
  try:
    if isinstance(sigma, (bool, np.bool_, str, bytes)):
      raise TypeError
    value = float(sigma)
  except (TypeError, ValueError):
    raise ValueError(message) from None
  if not (value > 0 and math.isfinite(value)):
    raise ValueError(message)
  return value


def check_flag(field: str, value: Any) -> bool:
  """Returns `value` if it is a bool (Python or NumPy), else raises."""
  if not isinstance(value, (bool, np.bool_)):
    raise ValueError(f"{field} must be True or False, got {value!r}")
  return bool(value)


def check_particle_map(particle_map: Any) -> Callable[..., Any]:
  """Returns `particle_map` if it is callable, else raises ValueError."""
  if not callable(particle_map):
    raise ValueError(
      "particle_map must be a callable (window, theta, state, keys, "
      f"num_steps) -> outputs, got {particle_map!r}"
    )
  return particle_map
