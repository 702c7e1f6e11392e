"""Meta-evaluation during training: the learned optimizer against Adam.

At every `eval.every_steps` outer steps the current theta trains fresh models
of every task (held-out seeds, each task over its own horizon) and is scored
against Adam at `eval.adam_learning_rate` on the same seeds. A family's score
is each task's learned / Adam ratio of the mean training loss and their mean,
the family's measure on its own tasks; the held-out suites
(`lopt.evaluate --suite`) measure generalisation.

Both evaluations run replicated (theta and the data are). Their keys are
made inside jit: a host-made key array would live on one local device, which
a multi-process computation cannot take as input. Adam's scores do not depend
on theta, so they are computed once, on first use: a resumed run that
reaches no evaluation step never compiles them.
"""

import functools

import jax
import numpy as np
from absl import logging

from lopt import experiment, sharding
from lopt.experiment import Experiment
from lopt.learned import optimizers
from lopt.metrics import MetricWriter


def _scores(exp: Experiment, prefix: str, result) -> dict[str, float]:
  """`eval/<prefix>/[<task>/]<score>` of a per-task evaluation result."""
  scores = {}
  for name, per_task in sharding.to_host(result).items():
    where = f"eval/{prefix}/{name}/" if exp.is_family else f"eval/{prefix}/"
    for k, v in experiment.summarize_eval(per_task).items():
      scores[where + k] = v
  return scores


class MetaEvaluator:
  """Scores a theta on the run's own tasks and writes the scores.

  Usage: `evaluate = MetaEvaluator(exp, data, writer)`, then
  `evaluate(step, theta)` at each evaluation step; `evaluate.adam()` gives
  (and computes once) Adam's scores.
  """

  def __init__(self, exp: Experiment, data, writer: MetricWriter):
    self._exp, self._data, self._writer = exp, data, writer
    self._adam_scores: dict[str, float] = {}
    config = exp.config
    replicated = sharding.replicated(exp.mesh)
    adam = optimizers.adam_baseline(config.eval.adam_learning_rate)

    def scores_of(data, tx_of):
      return {
        g.name: experiment.evaluate_optimizer(
          exp,
          exp.group_data(data, g.name),
          tx_of(g),
          experiment.eval_keys(config),
          g.name,
        )
        for g in exp.groups
      }

    @functools.partial(jax.jit, out_shardings=replicated)
    def eval_learned(data, theta):
      return scores_of(
        data, lambda g: optimizers.learned_optimizer(theta, exp.lopt, g.horizon)
      )

    @functools.partial(jax.jit, out_shardings=replicated)
    def eval_adam(data):
      return scores_of(data, lambda g: adam)

    self._eval_learned, self._eval_adam = eval_learned, eval_adam

  def adam(self) -> dict[str, float]:
    """Adam's scores, `eval/adam/...`; computed on first use."""
    if not self._adam_scores:
      result = self._eval_adam(self._data)
      self._adam_scores.update(_scores(self._exp, "adam", result))
    return self._adam_scores

  def __call__(self, step: int, theta) -> dict[str, float]:
    """Scores `theta`, writes the scores at `step`, logs one line."""
    exp, config = self._exp, self._exp.config
    scores = _scores(exp, "learned", self._eval_learned(self._data, theta))
    names = [g.name for g in exp.groups]
    if exp.is_family:
      ratios = {
        f"eval/ratio/{name}": scores[f"eval/learned/{name}/mean_train_loss"]
        / self.adam()[f"eval/adam/{name}/mean_train_loss"]
        for name in names
      }
      scores.update(ratios)
      scores["eval/ratio/mean"] = float(np.mean(list(ratios.values())))
    self._writer.write(step, scores)
    if exp.is_family:
      logging.info(
        "Eval at step %d: learned / Adam (lr %g) mean train loss, mean over "
        "%d tasks %.3f (%s; %d held-out seeds)",
        step,
        config.eval.adam_learning_rate,
        len(names),
        scores["eval/ratio/mean"],
        ", ".join(f"{n} {scores[f'eval/ratio/{n}']:.3f}" for n in names),
        config.eval.num_seeds,
      )
    else:
      logging.info(
        "Eval at step %d: learned optimizer %.4f, Adam (lr %g) %.4f (mean "
        "train loss over T = %d, %d held-out seeds)",
        step,
        scores["eval/learned/mean_train_loss"],
        config.eval.adam_learning_rate,
        self.adam()["eval/adam/mean_train_loss"],
        config.inner.horizon,
        config.eval.num_seeds,
      )
    return scores
