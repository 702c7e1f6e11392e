"""The default: meta-train on the bundled digits, 8x8, on a CPU in minutes.

    python -m lopt.main --config=configs/default.py --workdir=/tmp/lopt

Inner task: MLP 64-32-32-32-10 (gelu) on sklearn's 1,797 8x8 digits, batch
128, T = 1000 steps, meta-loss = training-batch loss. Learned optimizer:
the 'nominal' kind (learned corrections to an Adam step whose learning rate
is itself learned). Estimator: NRES with 16 antithetic pairs, W = 10.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config; `arg` is unused (kept for `file.py:arg` syntax)."""
  del arg
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.task = ml_collections.ConfigDict()
  config.task.dataset = "digits"
  config.task.data_dir = ""  # "" = $TFDS_DATA_DIR or ~/tensorflow_datasets
  config.task.image_size = 0  # 0 = native size
  config.task.model = "mlp"
  config.task.hidden = (32, 32, 32)
  config.task.activation = "gelu"
  config.task.batch_size = 128
  config.task.meta_loss = "train"
  config.task.clip_meta_loss = True  # cap L_t at 1.5 ln(num_classes)

  config.inner = ml_collections.ConfigDict()
  config.inner.horizon = 1000

  config.lopt = ml_collections.ConfigDict()
  config.lopt.kind = "nominal"
  config.lopt.hidden = (32, 32)

  config.estimator = ml_collections.ConfigDict()
  config.estimator.name = "nres"
  config.estimator.num_particles = 16
  config.estimator.unroll_length = 10
  config.estimator.sigma = 0.01
  config.estimator.noise_period = 0  # gpes only; 0 = unset
  config.estimator.step_unlocked = True

  config.outer = ml_collections.ConfigDict()
  config.outer.optimizer = "adam"
  config.outer.learning_rate = 3e-4
  config.outer.clip = 1.0
  config.outer.num_steps = 1500
  config.outer.steps_per_dispatch = 10

  config.checkpoint = ml_collections.ConfigDict()
  # By the clock, so that a kill (or a crash) loses at most about a minute
  # of work whatever a step costs; SIGTERM saves the step reached anyway.
  # every_steps (0 = off) adds saves at fixed steps; keep_period (0 = off)
  # keeps those multiples beside the newest `keep`.
  config.checkpoint.every_seconds = 60.0
  config.checkpoint.every_steps = 0
  config.checkpoint.keep = 3
  config.checkpoint.keep_period = 0

  config.eval = ml_collections.ConfigDict()
  config.eval.every_steps = 500  # 0 turns meta-evaluation off
  config.eval.num_seeds = 4
  config.eval.adam_learning_rate = 0.02  # the reference line in the logs

  config.log = ml_collections.ConfigDict()
  config.log.every_steps = 100
  return config
