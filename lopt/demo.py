"""`make demo`: the PES paper's influence-balancing comparison.

Prints the final theta of each estimator against the true optimum.
"""

from absl import app


def main(argv):
  del argv
  from lopt import influence  # after absl parsed flags

  print("Influence balancing (PES paper): SGD 1e-4, 3000 steps, "
        "500 particles, sigma 0.1")
  print(influence.table())


if __name__ == "__main__":
  app.run(main)
