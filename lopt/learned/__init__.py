"""The learned optimizer: what meta-training trains and what users run.

`LOptConfig` names an architecture, `init_theta` draws its meta-parameters
and `learned_optimizer(theta, cfg, num_steps)` turns both into an
`optax.GradientTransformation`. The same transformation is what the inner
training of meta-training calls and what `lopt.load_optimizer` returns.

Modules: `config` (the architecture), `features` (the optimizer's state and
per-parameter inputs), `network` (the per-parameter MLP), `optimizers` (the
optax transformations: the learned one and the Adam baseline).
"""

from lopt.learned.config import KINDS, LOptConfig
from lopt.learned.optimizers import adam_baseline, init_theta, learned_optimizer

__all__ = [
  "KINDS",
  "LOptConfig",
  "adam_baseline",
  "init_theta",
  "learned_optimizer",
]
