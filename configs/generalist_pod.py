"""The generalist at pod scale: nine tasks over real tfds datasets.

    python -m lopt.main --distributed --workdir=gs://BUCKET/lopt/generalist \
        --config=configs/generalist_pod.py:devices=16,per_device=8

configs/generalist.py's recipe (the `adam` loss normaliser, unit-norm
combination, the batch-fraction augmentation, the 'adaptive' learned
optimizer) over MNIST, Fashion-MNIST,
KMNIST and CIFAR-10 at 8x8 to 32x32, MLPs and CNNs, batches of 64-256 and
horizons of 1,000-4,000. Every task is a group of `devices * per_device`
particles (the same for all, so that no group's estimate is noisier for
being smaller); the argument works as in configs/tpu_fashion_mnist8_nres.py
(keep it when resuming). Every field, every task's included, is checked at
start-up; the datasets must be prepared in `$TFDS_DATA_DIR`, which every
host reads (see configs/tpu_fashion_mnist8_nres.py for the command).
"""

import importlib.util
import os

import ml_collections

from lopt.experiment import load_config

_HERE = os.path.dirname(os.path.abspath(__file__))


def _parse_arg(arg):
  # The argument of the TPU config: one parser, loaded by path.
  path = os.path.join(_HERE, "tpu_fashion_mnist8_nres.py")
  spec = importlib.util.spec_from_file_location("lopt_config_tpu_fm8", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.parse_arg(arg)


def _task(**fields) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(fields)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  values = _parse_arg(arg)
  config = load_config(os.path.join(_HERE, "generalist.py"))
  config.estimator.num_particles = values["devices"] * values["per_device"]
  config.family.tasks = ml_collections.ConfigDict()
  tasks = config.family.tasks
  tasks.mnist8_mlp = _task(dataset="mnist", image_size=8, hidden=(32, 32))
  tasks.mnist28_mlp = _task(
    dataset="mnist", hidden=(128, 128), activation="relu", horizon=2000
  )
  tasks.fashion8_mlp = _task(
    dataset="fashion_mnist", image_size=8, hidden=(64, 32, 32), horizon=1000
  )
  tasks.fashion16_cnn = _task(
    dataset="fashion_mnist",
    image_size=16,
    model="cnn",
    hidden=(16, 32),
    activation="relu",
    batch_size=64,
  )
  tasks.kmnist14_mlp = _task(
    dataset="kmnist", image_size=14, hidden=(64, 64), activation="tanh"
  )
  tasks.kmnist28_cnn = _task(
    dataset="kmnist",
    model="cnn",
    hidden=(16, 32, 32),
    activation="relu",
    batch_size=64,
    horizon=2000,
  )
  tasks.cifar8_mlp = _task(
    dataset="cifar10", image_size=8, hidden=(64, 64), batch_size=256
  )
  tasks.cifar16_cnn = _task(
    dataset="cifar10",
    image_size=16,
    model="cnn",
    hidden=(32, 32),
    activation="relu",
    horizon=4000,
  )
  tasks.cifar32_cnn = _task(
    dataset="cifar10",
    image_size=0,
    model="cnn",
    hidden=(32, 32, 32),
    activation="relu",
    batch_size=64,
    horizon=2000,
  )
  config.outer.num_steps = 50_000
  # The outer rate is halved (generalist.py's decay_factor) every 10,000
  # steps instead of every 500.
  config.outer.decay_steps = 10_000
  # Every 5 minutes: a save of 64 hosts' inner states costs more than a
  # CPU's, and a preemption (SIGTERM) saves the step reached anyway.
  config.checkpoint.every_seconds = 300.0
  config.checkpoint.every_steps = 0
  config.checkpoint.keep_period = 0
  config.eval.every_steps = 0  # on a pod: score checkpoints with lopt.evaluate
  return config
