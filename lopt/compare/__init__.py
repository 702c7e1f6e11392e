"""Estimators side by side under one budget (`python -m lopt.compare`).

`run` resolves the labels and runs them, `toy` and `learned` are the two
runners (toy systems; learned-optimizer configs), `budget` says how long a
run goes, `stats` summarises the seeds and `report` writes the JSON, the
figure and the tables.
"""

from lopt.compare.budget import Budget
from lopt.compare.run import compare

__all__ = ["Budget", "compare"]
