"""Unrolled systems: the protocol estimators work on, and toy systems with
known answers (used by the tests, the demo and the paper reproductions)."""

from lopt.systems.base import State, UnrolledSystem
from lopt.systems.influence_balancing import InfluenceBalancing
from lopt.systems.linear_quadratic import LinearQuadratic
from lopt.systems.lorenz import Lorenz
from lopt.systems.toy_regression import ToyRegression

__all__ = [
  "InfluenceBalancing",
  "LinearQuadratic",
  "Lorenz",
  "State",
  "ToyRegression",
  "UnrolledSystem",
]
