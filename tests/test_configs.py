"""Every shipped config is valid and says what its docstring promises."""

import importlib
import os

import pytest

from lopt import validation

CONFIGS = sorted(
  f[:-3]
  for f in os.listdir(os.path.join(os.path.dirname(__file__), "..", "configs"))
  if f.endswith(".py") and f != "__init__.py"
)
# Toy-system configs (KIND = "toy") are checked in tests/test_compare.py.
CONFIGS = [
  n
  for n in CONFIGS
  if getattr(importlib.import_module(f"configs.{n}"), "KIND", "lopt") != "toy"
]


@pytest.mark.parametrize("name", CONFIGS)
def test_config_is_valid(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  validation.check_config(config)


def test_paper_settings():
  fmnist = importlib.import_module("configs.fashion_mnist8_nres").get_config()
  pes = importlib.import_module("configs.fashion_mnist8_pes").get_config()
  assert (fmnist.task.dataset, fmnist.task.image_size) == ("fashion_mnist", 8)
  assert fmnist.lopt.kind == "mlp" and fmnist.task.meta_loss == "validation"
  assert (
    fmnist.estimator.num_particles,
    fmnist.estimator.unroll_length,
    fmnist.estimator.sigma,
  ) == (100, 1, 0.01)
  assert pes.estimator.name == "pes"
