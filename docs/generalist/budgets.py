"""The held-out suite's score against meta-training time.

    python docs/generalist/budgets.py --workdir=/tmp/generalist \
        --steps=0,1000,2000,3000 [--suite=heldout] [--output=docs/generalist]

Scores the checkpoint of each outer step of a meta-training workdir (0 = the
initial theta, before any meta-training) on a held-out suite against Adam
tuned per task (`lopt.evaluate --suite`; Adam comes from its cache after
the first run), and writes `budgets.json` (per budget: the outer step, the
training seconds `lopt.main` logged up to it, and the suite's aggregates
with their intervals), `budgets.png`, and the suite's table and figure for
the last budget (`suite_<name>.{md,png,json}`). A generalist whose score
does not improve with its budget is not learning anything general.
"""

import json
import os
import shutil

import ml_collections
from absl import app, flags

from lopt import console, experiment, export, jsonio, plots
from lopt.suite import evaluation as suite
from lopt.train import resume
from lopt.train import step as train_step

_WORKDIR = flags.DEFINE_string("workdir", None, "A meta-training workdir.")
_STEPS = flags.DEFINE_list("steps", ["0"], "Outer steps to score (0: init).")
_SUITE = flags.DEFINE_string("suite", "heldout", "The held-out suite.")
_OUTPUT = flags.DEFINE_string("output", "docs/generalist", "Output directory.")
_SCRATCH = flags.DEFINE_string(
  "scratch", "/tmp/lopt_budgets", "Each step's full suite output goes here."
)
_REUSE = flags.DEFINE_bool(
  "reuse", False, "Read a step's suite JSON from --scratch if it is there."
)


def _theta(workdir: str, step: int):
  if step:
    theta, cfg, _ = export.load_theta(workdir, step)
    return theta, cfg
  _, cfg, saved = export.load_theta(workdir)
  config = ml_collections.ConfigDict(saved["config"])
  config.family.normalizer = "none"  # nothing to measure for theta_0
  data, datasets = experiment.load_data(config)
  return train_step.initial_theta(experiment.build(config, datasets)), cfg


def main(argv) -> None:
  del argv
  console.setup()
  workdir, output = _WORKDIR.value, _OUTPUT.value
  os.makedirs(output, exist_ok=True)
  rows = []
  for step in map(int, _STEPS.value):
    where = os.path.join(_SCRATCH.value, f"step_{step}")
    done = os.path.join(where, f"suite_{_SUITE.value}.json")
    if _REUSE.value and os.path.exists(done):
      with open(done) as f:
        summary = json.load(f)
    else:
      summary = suite.evaluate_suite(
        _theta(workdir, step), _SUITE.value, output=where
      )
    rows.append(
      {
        "outer_step": step,
        "train_seconds": resume.train_seconds_at(workdir, step),
        "aggregates": summary["aggregates"],
        "ratios": {t["name"]: t["ratio"] for t in summary["tasks"]},
      }
    )
  for name in os.listdir(where):
    shutil.copy(os.path.join(where, name), output)
  result = {
    "workdir": workdir,
    "suite": _SUITE.value,
    "config": export.load_theta(workdir)[2]["config"],
    "budgets": rows,
  }
  jsonio.dump(result, os.path.join(output, "budgets.json"))

  minutes = [r["train_seconds"] / 60 for r in rows]
  plt = plots.pyplot()
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
  for key, label in (("median_ratio", "median"), ("iqm_ratio", "IQM")):
    values = [r["aggregates"][key] for r in rows]
    lows = [r["aggregates"][f"{key}_ci95"][0] for r in rows]
    highs = [r["aggregates"][f"{key}_ci95"][1] for r in rows]
    ax1.errorbar(
      minutes,
      values,
      yerr=[
        [v - lo for v, lo in zip(values, lows)],
        [h - v for v, h in zip(values, highs)],
      ],
      marker="o",
      capsize=3,
      label=label,
    )
  ax1.axhline(1.0, color="gray", ls=":", lw=1)
  ax1.set_xlabel("meta-training time (CPU minutes)")
  ax1.set_ylabel("learned / tuned Adam, mean train loss")
  ax1.legend()
  ax2.plot(minutes, [r["aggregates"]["win_fraction"] for r in rows], "o-")
  ax2.set_ylim(0, 1)
  ax2.set_xlabel("meta-training time (CPU minutes)")
  ax2.set_ylabel("fraction of held-out tasks won")
  fig.suptitle(
    f"{_SUITE.value} suite vs meta-training budget (95% bootstrap CIs)"
  )
  fig.tight_layout()
  fig.savefig(os.path.join(output, "budgets.png"), dpi=110)
  for r in rows:
    a = r["aggregates"]
    print(
      f"step {r['outer_step']:>5} ({r['train_seconds'] / 60:.1f} min): wins "
      f"{a['win_fraction']:.2f}, median {a['median_ratio']:.3f}, worst "
      f"{a['worst_ratio']:.3f}, IQM {a['iqm_ratio']:.3f}"
    )


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  app.run(main)
