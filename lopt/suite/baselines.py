"""The untuned baselines of `lopt.suite`: what a user runs instead of tuning.

A learned optimizer's selling point is that it needs no tuning, so beating
an Adam tuned per task (the grid of `lopt.suite.evaluation`) is not the
whole story: a user who will not tune has cheaper choices, and those are
its real competitors. Every suite task also trains, on the same inits and
batches as tuned Adam and the learned optimizer:

* `adam_1e-3`: Adam at its folklore default, a constant 1e-3 (what a user
  types without thinking);
* `prodigy`: Prodigy (Mishchenko & Defazio 2023, arXiv:2306.06101), which
  estimates Adam's learning rate from the distance travelled (D-Adaptation);
* `schedule_free_adamw`: schedule-free AdamW (Defazio et al. 2024, "The Road
  Less Scheduled", arXiv:2405.15682), which replaces the decay schedule by
  averaging its iterates, so it needs no horizon.

The last two are `TUNING_FREE`; a task's "tuning-free" reference is the
better of them there (lower mean training loss over seeds).

All run at optax's documented defaults, taken from the signatures in
`optax.contrib` (optax 0.2.8, https://optax.readthedocs.io/en/latest/api/
contrib.html): `prodigy(learning_rate=1.0, betas=(0.9, 0.999), eps=1e-8,
estim_lr0=1e-6, weight_decay=0.0)` and `schedule_free_adamw(
learning_rate=0.0025, warmup_steps=None, b1=0.9, b2=0.999, eps=1e-8,
weight_decay=0.0, weight_lr_power=2.0)`. The optax version is part of their
cache key (`lopt.suite.evaluation`), in case a default changes.

Schedule-free methods take their gradients at one point sequence (y) and
average another (x): their model is x, so `eval_params` evaluates the
held-out (test) loss and accuracy at `optax.contrib.schedule_free_eval_params`
for any baseline whose state holds a `ScheduleFreeState`, and at the
parameters themselves for the others. The training loss, for every
optimizer, stays the loss where the gradient is taken (what the optimizer
sees).

Adding a baseline is one line in `TUNING_FREE` or `BASELINES`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import optax

Factory = Callable[[int], optax.GradientTransformation]

#: name -> (num_steps -> optax transformation), at optax's defaults (above).
TUNING_FREE: dict[str, Factory] = {
  "prodigy": lambda num_steps: optax.contrib.prodigy(),
  "schedule_free_adamw": lambda num_steps: optax.contrib.schedule_free_adamw(),
}
#: Every baseline beside tuned Adam, in report order.
BASELINES: dict[str, Factory] = {
  "adam_1e-3": lambda num_steps: optax.adam(1e-3),
  **TUNING_FREE,
}


def _is_schedule_free(x) -> bool:
  return isinstance(x, optax.contrib.ScheduleFreeState)


def eval_params(opt_state: optax.OptState, params):
  """The parameters a baseline's model is evaluated at after training.

  The averaged iterate when `opt_state` holds a `ScheduleFreeState`
  (anywhere, e.g. inside a chain), else `params`.
  """
  found = [
    s
    for s in jax.tree.leaves(opt_state, is_leaf=_is_schedule_free)
    if _is_schedule_free(s)
  ]
  if not found:
    return params
  if len(found) > 1:
    raise ValueError("More than one ScheduleFreeState: ambiguous eval params.")
  return optax.contrib.schedule_free_eval_params(found[0], params)
