"""Held-out suites: score a learned optimizer on tasks it never saw.

`tasks` names the suites and their tasks, `evaluation` trains each task
with the learned optimizer and with Adam tuned per task (cached), `metrics`
turns the runs into ratios with bootstrap intervals, `report` writes the
tables, JSON and figure. `python -m lopt.evaluate --suite=NAME` runs one.
"""

from lopt.suite.evaluation import evaluate_suite
from lopt.suite.report import format_table
from lopt.suite.tasks import SUITES

__all__ = ["SUITES", "evaluate_suite", "format_table"]
