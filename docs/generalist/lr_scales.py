"""Where the adaptive kind's per-tensor learning rates go on one task.

    python docs/generalist/lr_scales.py --workdir=/tmp/generalist \
        --step=1000 --task=cnn4x8_elu [--output=docs/generalist]

Trains the held-out suite's task with the workdir's theta (the suite's
seeds) and records, per parameter tensor, the log-scale s of its rate (the
rate is exp(theta['log_lr'] + s) times the linear decay) averaged over the
seeds and over spans of the run, next to the training loss of the learned
optimizer and of tuned Adam's best configuration (the suite's cached curve).
Writes `lr_scales_<task>.json` and prints the table.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from lopt import console, export, jsonio
from lopt.learned import optimizers
from lopt.suite import evaluation as suite
from lopt.suite import tasks as suite_tasks
from lopt.tasks import inner

_WORKDIR = flags.DEFINE_string("workdir", None, "A meta-training workdir.")
_STEP = flags.DEFINE_integer("step", None, "Its checkpoint (default: last).")
_TASK = flags.DEFINE_string("task", "cnn4x8_elu", "A held-out suite task.")
_OUTPUT = flags.DEFINE_string("output", "docs/generalist", "Output directory.")
NUM_SPANS = 8


def main(argv) -> None:
  del argv
  console.setup()
  theta, cfg, _ = export.load_theta(_WORKDIR.value, _STEP.value)
  if cfg.kind != "adaptive":
    raise ValueError(
      f"{_WORKDIR.value} is a {cfg.kind!r} optimizer, not adaptive."
    )
  heldout = suite_tasks.SUITES["heldout"]
  spec = next(t for t in heldout.tasks if t.name == _TASK.value)
  data, ds = suite.load_data(spec)
  task = suite_tasks.build_task(spec, ds.image_shape, ds.num_classes)
  keys = suite_tasks.task_keys(heldout.seeds)
  learned = optimizers.learned_optimizer(theta, cfg, spec.horizon)
  out = jax.jit(
    jax.vmap(
      lambda k: inner.train_model(
        task,
        learned,
        data,
        k,
        spec.horizon,
        trace=lambda state: jnp.stack(jax.tree.leaves(state.log_lr_scale)),
      )
    )
  )(keys)
  losses, scales = np.asarray(out["losses"]), np.asarray(out["trace"])
  adam_ = suite.tuned_adam(
    spec,
    task,
    data,
    heldout.seeds,
    (suite.LEARNING_RATES, suite.SCHEDULES),
    suite.DEFAULT_ADAM_CACHE_DIR,
  )
  best = adam_["sweep"][adam_["best"]]
  adam_curve = adam_["best_curve"]  # the seed-mean loss per step
  shapes = [
    list(x.shape) for x in jax.tree.leaves(jax.eval_shape(task.init, keys[0]))
  ]
  edges = np.linspace(0, spec.horizon, NUM_SPANS + 1).astype(int)
  spans = []
  for lo, hi in zip(edges[:-1], edges[1:]):
    spans.append(
      {
        "steps": [int(lo), int(hi)],
        "learned_loss": float(np.mean(losses[:, lo:hi])),
        "adam_loss": float(np.mean(adam_curve[lo:hi])),
        "log_lr_scale": np.mean(scales[:, lo:hi], axis=(0, 1)),
      }
    )
  result = {
    "workdir": _WORKDIR.value,
    "step": _STEP.value,
    "task": spec.name,
    "seeds": list(heldout.seeds),
    "base_learning_rate": float(np.exp(np.ravel(theta["log_lr"])[0])),
    "adam": {
      "schedule": best["schedule"],
      "learning_rate": best["learning_rate"],
    },
    "tensor_shapes": shapes,
    "spans": spans,
    "mean_ratio": float(np.mean(losses) / np.mean(adam_curve)),
  }
  os.makedirs(_OUTPUT.value, exist_ok=True)
  path = jsonio.dump(
    result, os.path.join(_OUTPUT.value, f"lr_scales_{spec.name}.json")
  )
  print(
    f"{spec.name}: base rate {result['base_learning_rate']:.4f}; tuned Adam "
    f"{best['learning_rate']:g} {best['schedule']}; tensors {shapes}"
  )
  for span in spans:
    s = " ".join(f"{x:+.2f}" for x in span["log_lr_scale"])
    print(
      f"steps {span['steps'][0]:5d}-{span['steps'][1]:5d}: loss learned "
      f"{span['learned_loss']:.4f}, Adam {span['adam_loss']:.4f}; s = {s}"
    )
  print(f"Mean training loss ratio {result['mean_ratio']:.3f}. Wrote {path}.")


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  app.run(main)
