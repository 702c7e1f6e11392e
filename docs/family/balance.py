"""How much of the outer update each task of a family carries.

    python docs/family/balance.py [--steps=40] [--output=docs/family/balance.json]
    python docs/family/balance.py --config=configs/wide_generalist.py \
        --steps=20 --output=docs/family/balance_wide.json

Meta-trains a family config (configs/generalist.py by default) for
`--steps` outer steps from its initial theta under two loss normalisers
with `family.combine = 'mean'`, then reads each task's per-step estimate
norm and its mean per-step loss as the estimator sees it (`meta_loss`) from
metrics.jsonl. Under `none` the losses keep their own scales (a 256-way
next-byte cross-entropy, a Bernoulli pixel loss, a standardised squared
error); under `adam` each reads as its ratio to tuned Adam's. The estimates are almost pure noise (grad_snr ~ 0), which is
roughly orthogonal between tasks, so a task's share of the update's squared
norm is its mean squared norm over the sum of the tasks'. Under
`combine = 'unit'` every estimate is scaled to norm 1 before the mean, so
each of the N tasks carries 1/N by construction. Takes ~5 minutes per setting on a 2-core CPU; pass
`--workdirs=name=dir,...` to read finished runs instead.
"""

import json
import os
import subprocess
import sys

import numpy as np
from absl import app, flags

_STEPS = flags.DEFINE_integer("steps", 40, "Outer steps per setting.")
_CONFIG = flags.DEFINE_string(
  "config", "configs/generalist.py", "The family config to measure."
)
_OUTPUT = flags.DEFINE_string(
  "output", "docs/family/balance.json", "Where the JSON goes."
)
_WORKDIRS = flags.DEFINE_string(
  "workdirs", "", "name=workdir,... of finished runs to read, not rerun."
)
_SETTINGS = {
  "none+mean": ("none", "mean"),
  "adam+mean": ("adam", "mean"),
}


def _run(name: str, steps: int) -> str:
  normalizer, combine = _SETTINGS[name]
  tag = os.path.splitext(os.path.basename(_CONFIG.value))[0]
  workdir = f"/tmp/lopt_balance/{tag}/{name}"
  subprocess.run(
    [
      sys.executable,
      "-m",
      "lopt.main",
      f"--config={_CONFIG.value}",
      f"--workdir={workdir}",
      f"--config.family.normalizer={normalizer}",
      f"--config.family.combine={combine}",
      f"--config.outer.num_steps={steps}",
      "--config.log.every_steps=10",
      "--config.eval.every_steps=0",
      f"--config.checkpoint.every_steps={steps}",
    ],
    check=True,
  )
  return workdir


def _shares(workdir: str) -> dict:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  rows = [r for r in rows if "grad_norm" in r]
  names = sorted(
    {k.split("/")[0] for r in rows for k in r if k.endswith("/grad_norm")}
  )
  energy = np.array(
    [np.mean([r[f"{n}/grad_norm"] ** 2 for r in rows]) for n in names]
  )
  return {
    "tasks": {
      n: {
        "grad_norm_rms": float(np.sqrt(e)),
        "share": float(e / energy.sum()),
        "grad_snr_median": float(np.median([r[f"{n}/grad_snr"] for r in rows])),
        "meta_loss": float(np.mean([r[f"{n}/meta_loss"] for r in rows])),
      }
      for n, e in zip(names, energy, strict=True)
    },
    "largest_share": float(energy.max() / energy.sum()),
    "log_points": len(rows),
  }


def main(argv) -> None:
  del argv
  given = dict(p.split("=", 1) for p in _WORKDIRS.value.split(",") if p)
  result = {
    "config": _CONFIG.value,
    "outer_steps": _STEPS.value,
    "note": (
      "'share' is each task's mean squared estimate norm over the sum of "
      "the tasks', under combine='mean'; under 'unit' each is 1/N; "
      "'meta_loss' is its mean per-step loss as the estimator sees it"
    ),
    "settings": {},
  }
  for name in _SETTINGS:
    if name in given or not given:
      workdir = given.get(name) or _run(name, _STEPS.value)
      result["settings"][name] = _shares(workdir)
  with open(_OUTPUT.value, "w") as f:
    json.dump(result, f, indent=1)
  for name, r in result["settings"].items():
    losses = [t["meta_loss"] for t in r["tasks"].values()]
    print(
      f"{name}: largest share {r['largest_share']:.2f}; per-task mean loss "
      f"{min(losses):.3g} .. {max(losses):.3g}"
    )


if __name__ == "__main__":
  app.run(main)
