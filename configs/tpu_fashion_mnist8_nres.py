"""The NRES paper's Fashion-MNIST 8x8 setting, scaled out over a pod slice.

    python -m lopt.main --distributed --workdir=gs://BUCKET/lopt/fm8 \
        --config=configs/tpu_fashion_mnist8_nres.py:devices=16,per_device=8

The task, learned optimizer and estimator are those of
`fashion_mnist8_nres.py` (MLP 64-32-32-32-10 on 8x8 Fashion-MNIST, T = 1000,
validation meta-loss, the `mlp` learned optimizer, NRES with W = 1 and
sigma = 0.01, Adam 3e-4), but the population grows with the slice:

    estimator.num_particles = devices * per_device

Both come from the config argument (defaults: `devices=16`, the JAX devices
of a v4-32 slice, whose 16 chips are one device each; `per_device=8`, i.e.
128 particles, a little more than the paper's 100). They are read from the
argument, not from `jax.device_count()`, on purpose:

* the config is loaded before `jax.distributed.initialize()`, which must run
  before anything touches the devices;
* the particle count is part of the checkpointed state: a run resumed on a
  slice of another size (after a preemption, say) must keep it. Keep the
  same argument when resuming; any device count that divides the particle
  count works (128 particles resume on 1, 2, 4, ..., 128 devices).

Other slices: `devices=32` for a v5litepod-32 (v5e) or v4-64; `devices=8`
for a single v4-8 host. More particles per device cost almost nothing extra
per step on a TPU at this model size, so `per_device` is the knob for
estimate quality, `devices` for the slice.

Needs Fashion-MNIST prepared in `$TFDS_DATA_DIR` (e.g.
gs://BUCKET/tensorflow_datasets), which every host reads:

    python -c "import tensorflow_datasets as tfds; \
      tfds.builder('fashion_mnist', data_dir='gs://BUCKET/tensorflow_datasets'\
      ).download_and_prepare()"
"""

import os

import ml_collections

from lopt.experiment import load_config

#: The config this one derives from, loaded by path like any config file.
_BASE = os.path.join(
  os.path.dirname(os.path.abspath(__file__)), "fashion_mnist8_nres.py"
)

DEFAULTS = {"devices": 16, "per_device": 8}


def parse_arg(arg: str | None) -> dict[str, int]:
  """Parses 'devices=32,per_device=8' (either part optional) into ints."""
  values = dict(DEFAULTS)
  for item in filter(None, (arg or "").split(",")):
    name, sep, value = item.partition("=")
    name = name.strip()
    if not sep or name not in DEFAULTS:
      raise ValueError(
        f"tpu_fashion_mnist8_nres config argument {item!r}: expected "
        f"name=value with name one of {sorted(DEFAULTS)}, e.g. "
        f"'devices=32,per_device=8'"
      )
    try:
      values[name] = int(value)
    except ValueError:
      raise ValueError(
        f"tpu_fashion_mnist8_nres config argument {name}: "
        f"expected an integer, got {value!r}"
      ) from None
    if values[name] < 1:
      raise ValueError(
        f"tpu_fashion_mnist8_nres config argument {name} "
        f"must be >= 1, got {values[name]}"
      )
  return values


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config; `arg` is 'devices=N,per_device=P' (see above)."""
  scale = parse_arg(arg)
  config = load_config(_BASE)
  config.estimator.num_particles = scale["devices"] * scale["per_device"]
  # 100 outer steps per dispatch: one host round trip per 100 updates keeps
  # the TPU busy; checkpoints, logs and evals fall between dispatches.
  config.outer.steps_per_dispatch = 100
  config.checkpoint.every_seconds = 300.0  # see generalist_pod.py
  config.checkpoint.keep = 3
  config.eval.every_steps = 10_000
  config.log.every_steps = 500
  return config
