"""`python -m lopt.compare`: see `lopt.compare.run` for the flags."""

from lopt import console
from lopt.compare import run

if __name__ == "__main__":
  console.run_program(run.main, run.define_flags, required=["config"])
