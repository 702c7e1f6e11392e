"""The generalist families' outer step with lax's convolution gradient and
with `lopt.tasks.networks.conv`, through the production step.

    python docs/performance/conv_family.py [--output=docs/performance/conv_family.json]

Runs `lopt.bench.kinds.kinds_case` (8 particles a group, W = 10, the
median of 5 timed dispatches) on configs/generalist.py's family and on the
bench's ResNet kind, each in a fresh subprocess, once with every `nn.Conv`
of `lopt.tasks.networks` on lax's own gradient and once on
`networks.conv`, and writes their inner steps/s and GFLOP/s.
"""

import json
import os
import subprocess
import sys

from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
_OUTPUT = flags.DEFINE_string(
  "output", os.path.join(HERE, "conv_family.json"), "Where the JSON goes."
)

_CASE = """
import json, sys
import flax.linen as nn
from lopt.tasks import networks
if sys.argv[1] == "lax":
  networks._conv_layer = lambda w, k: nn.Conv(w, k, padding="SAME")
from lopt.bench import kinds
from lopt.bench.cases import repo_config
spec = dict(kind="kinds", num_particles=8, unroll_length=10, reps=5)
if sys.argv[2] == "resnet":
  spec["task_kind"] = "resnet"
else:
  spec["config"] = repo_config(sys.argv[2])
case = kinds.kinds_case(spec)
print(json.dumps({k: case[k] for k in ("inner_steps_per_sec", "achieved_gflops", "compile_seconds")}))
"""


def main(argv) -> None:
  del argv
  result = {}
  for case in ("generalist", "resnet"):
    for conv in ("lax", "networks.conv"):
      out = (
        subprocess.run(
          [sys.executable, "-c", _CASE, conv, case],
          cwd=REPO,
          capture_output=True,
          text=True,
          check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
      )
      result.setdefault(case, {})[conv] = json.loads(out)
      print(case, conv, result[case][conv], flush=True)
    result[case]["speedup"] = (
      result[case]["networks.conv"]["inner_steps_per_sec"]
      / result[case]["lax"]["inner_steps_per_sec"]
    )
  with open(_OUTPUT.value, "w") as f:
    json.dump(result, f, indent=1)
  print({c: round(r["speedup"], 2) for c, r in result.items()})


if __name__ == "__main__":
  app.run(main)
