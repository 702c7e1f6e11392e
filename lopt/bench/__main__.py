"""`python -m lopt.bench`: see `lopt.bench.run` for the flags."""

from lopt import console
from lopt.bench import run

if __name__ == "__main__":
  console.run_program(run.main, run.define_flags)
