"""The README's result numbers are the committed JSON's, so they cannot drift.

A results passage of the README is fenced by HTML comments naming the JSON
files it reports:

    <!-- numbers: docs/figures/lorenz_paper.json -->
    ... prose and tables ...
    <!-- /numbers -->

Every number in the passage (outside code spans, links and image paths)
must be one of those files' values as printed: it equals some number of the
JSON, excluding the per-run curves (`runs`), rounded to the digits shown.
A passage may also copy a table that `lopt.compare.format_table` makes from
the JSON, or one from a Markdown file the fence names (a script's tables):
every table row that starts with one of the JSON's estimator labels must be
a line of those tables, character for character. Rows are where most of a
passage's numbers are, and a value match alone lets a changed number pass
whenever it happens to equal another of a large JSON's values.
"""

import json
import math
import os
import re

import pytest

from lopt.compare import run as compare

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")

FENCE = re.compile(
  r"<!-- numbers: (?P<files>[^>]*?) -->(?P<body>.*?)<!-- /numbers -->", re.S
)
# A number: optional sign, digits with optional thousands commas, optional
# decimals and exponent; not part of a word (W1, x86, §5c) or of a path; a
# factor's "x" (2.44x) may follow.
NUMBER = re.compile(
  r"(?<![\w.§/-])[-−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:e[-+]?\d+)?"
  r"(?!/|(?!x\b)\w)"
)


def passages() -> list[tuple[list[str], str]]:
  with open(README) as f:
    text = f.read()
  return [(m["files"].split(), m["body"]) for m in FENCE.finditer(text)]


def json_numbers(obj, skip=("runs",)) -> list[float]:
  """Every number in `obj`, except under the keys `skip`."""
  out = []
  if isinstance(obj, dict):
    for k, v in obj.items():
      if k not in skip:
        out += json_numbers(v, skip)
  elif isinstance(obj, list):
    for v in obj:
      out += json_numbers(v, skip)
  elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
    out.append(float(obj))
  return out


def prose(body: str) -> str:
  """`body` without code spans, fenced code, links' targets and comments."""
  body = re.sub(r"```.*?```", " ", body, flags=re.S)
  body = re.sub(r"`[^`]*`", " ", body)
  body = re.sub(r"\]\([^)]*\)", "]", body)
  return re.sub(r"<!--.*?-->", " ", body, flags=re.S)


def shown(text: str) -> tuple[float, int | None]:
  """(value, significant digits shown; None for a plain integer)."""
  text = text.replace(",", "").replace("−", "-")
  value = float(text)
  mantissa = re.split("e", text.lstrip("-"))[0]
  if "." not in mantissa and "e" not in text:
    return value, None
  digits = mantissa.replace(".", "").lstrip("0")
  return value, max(1, len(digits))


def matches(text: str, candidates: list[float]) -> bool:
  value, digits = shown(text)
  width = len(text.strip("-−").replace(",", ""))  # a rounded integer's digits
  for c in candidates:
    if not math.isfinite(c):
      continue
    for v in (c, -c, 100 * c):  # signs; fractions shown as percentages
      if digits is None:
        if v == value or (abs(v) >= 1 and float(f"{v:.{width}g}") == value):
          return True
      elif float(f"{v:.{digits}g}") == value:
        return True
  return False


def test_readme_has_fenced_result_passages():
  found = passages()
  assert len(found) >= 3, "the README's result passages lost their fences"
  for files, _ in found:
    for path in files:
      assert os.path.exists(os.path.join(REPO, path)), path


@pytest.mark.parametrize(
  "files,body", passages(), ids=lambda x: x[0] if isinstance(x, list) else ""
)
def test_every_number_is_from_the_json(files, body):
  results, markdown = [], []
  for path in files:
    with open(os.path.join(REPO, path)) as f:
      if path.endswith(".md"):
        markdown += f.read().splitlines()
      else:
        results.append(json.load(f))
  # The interval level is compare's constant (older JSON lacks `ci_level`).
  candidates = [compare.CI_LEVEL] + [
    n for r in results for n in json_numbers(r)
  ]
  text = prose(body)
  # Table copies are compared whole below; their cells also pass here.
  unmatched = [t for t in NUMBER.findall(text) if not matches(t, candidates)]
  assert not unmatched, (
    f"README numbers not in {files} (as printed): {unmatched}"
  )
  compared = [r for r in results if "to_target" in r]  # lopt.compare JSON
  lines = [ln for r in compared for ln in compare.format_table(r).splitlines()]
  made = {line for line in lines + markdown if line.startswith("|")}
  labels = {label for r in compared for label in r["estimators"]}
  for line in body.splitlines():
    cells = line.split("|")
    if line.startswith("| ") and len(cells) > 2 and cells[1].strip() in labels:
      # An estimator's row: exactly as a table made from the JSON has it.
      assert line in made, f"README row not made from {files}: {line}"


def test_number_matching():
  assert matches("46.7", [46.72819])
  assert not matches("46.8", [46.72819])
  assert matches("1.07e+06", [1_071_234.0])
  assert matches("5,000", [5000])
  assert matches("3,867", [3867.297]) and not matches("3,868", [3867.297])
  assert matches("-0.166666", [-0.1666664])
  assert matches("95", [0.95])
  assert not matches("17", [16.2, 18.0])
  assert NUMBER.findall("W = 100, §5c, x86, 1e-5 and 2,000 (3.5), 2.44x") == [
    "100",
    "1e-5",
    "2,000",
    "3.5",
    "2.44",
  ]
