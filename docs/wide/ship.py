"""Ship a meta-trained checkpoint as package data: lopt/pretrained/<name>.*

    python docs/wide/ship.py --workdir=/tmp/wide --name=generalist \
        --commit=$(git rev-parse --short HEAD)

Writes `lopt/pretrained/<name>.npz` (theta) and `<name>.json` (its
architecture, digest and provenance: the config, the outer step, the
training seconds `lopt.main` logged up to it and the commit of the code
that meta-trained it), which `lopt.load_optimizer(<name>)` reads.
"""

import os
import sys

from absl import app, flags

REPO = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
sys.path.insert(0, REPO)

from lopt import export  # noqa: E402
from lopt.train import resume  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "The meta-training workdir.")
_NAME = flags.DEFINE_string("name", "generalist", "The shipped name.")
_STEP = flags.DEFINE_integer("step", None, "The checkpoint; newest if unset.")
_COMMIT = flags.DEFINE_string("commit", "", "The commit that meta-trained it.")
_CONFIG = flags.DEFINE_string(
  "config", "configs/wide_generalist.py", "The config file it ran."
)


def main(argv) -> None:
  del argv
  _, _, saved = export.load_theta(_WORKDIR.value, _STEP.value)
  step = _STEP.value
  if step is None:
    from lopt import checkpoint  # pylint: disable=g-import-not-at-top

    meta, _ = checkpoint.load_meta(os.path.join(_WORKDIR.value, "checkpoints"))
    step = int(meta["step"])
  card = export.write_shipped(
    _NAME.value,
    _WORKDIR.value,
    os.path.join(REPO, "lopt", "pretrained"),
    step,
    config_file=_CONFIG.value,
    outer_steps=step,
    train_seconds=resume.train_seconds_at(_WORKDIR.value, step),
    commit=_COMMIT.value,
  )
  print(f"Shipped {_NAME.value}: digest {card['digest'][:16]}..., step {step}")


if __name__ == "__main__":
  app.run(main)
