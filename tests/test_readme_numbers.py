"""The documentation's result numbers are the committed JSON's, so they
cannot drift.

A results passage of the README or of a page under docs/ is fenced by HTML
comments naming the JSON files it reports (paths from the repository root):

    <!-- numbers: docs/figures/lorenz_paper.json -->
    ... prose and tables ...
    <!-- /numbers -->

Every number in the passage (outside code spans, links and image paths)
must be one of those files' values as printed: it equals some number of the
JSON, excluding the per-run curves (`runs`), rounded to the digits shown.
A passage may also copy a table that `lopt.compare.report.format_table`
makes from the JSON, or one from a Markdown file the fence names (a script's
tables): every table row that starts with one of the JSON's estimator labels
must be a line of those tables, character for character. Rows are where
most of a passage's numbers are, and a value match alone lets a changed
number pass whenever it happens to equal another of a large JSON's values.

The README is a user's guide of at most `README_MAX_LINES` lines whose
"Results at a glance" tables are all fenced, and every relative link of the
README and the pages points at a file of the repository.
"""

import glob
import json
import math
import os
import re

import pytest

from lopt.compare import report as compare_report
from lopt.compare import stats as compare_stats

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
# The README and the pages under docs/ that hold the research record.
PAGES = [README] + sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))
README_MAX_LINES = 300
RESULTS_HEADING = "## Results at a glance"

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


def page_name(path: str) -> str:
  return os.path.relpath(path, REPO)


def read(path: str) -> str:
  with open(path) as f:
    return f.read()


def passages(page: str = README) -> list[tuple[list[str], str]]:
  return [(m["files"].split(), m["body"]) for m in FENCE.finditer(read(page))]


def all_passages() -> list[tuple[str, int, list[str], str]]:
  """(page, index on the page, files, body) of every fenced passage."""
  return [
    (page_name(page), i, files, body)
    for page in PAGES
    for i, (files, body) in enumerate(passages(page))
  ]


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
  found = all_passages()
  assert len(passages(README)) >= 3, "the README's results lost their fences"
  assert len(found) >= 10, "the pages' result passages lost their fences"
  for page, _, files, _ in found:
    for path in files:
      assert os.path.exists(os.path.join(REPO, path)), f"{page}: {path}"


@pytest.mark.parametrize(
  "page,index,files,body",
  all_passages(),
  ids=[f"{page}:{i}" for page, i, _, _ in all_passages()],
)
def test_every_number_is_from_the_json(page, index, files, body):
  results, markdown = [], []
  for path in files:
    with open(os.path.join(REPO, path)) as f:
      if path.endswith(".md"):
        markdown += f.read().splitlines()
      else:
        results.append(json.load(f))
  # The interval level is compare's constant (older JSON lacks `ci_level`).
  candidates = [compare_stats.CI_LEVEL] + [
    n for r in results for n in json_numbers(r)
  ]
  text = prose(body)
  # Table copies are compared whole below; their cells also pass here.
  unmatched = [t for t in NUMBER.findall(text) if not matches(t, candidates)]
  assert not unmatched, (
    f"{page}, passage {index}: numbers not in {files} (as printed): {unmatched}"
  )
  compared = [r for r in results if "to_target" in r]  # lopt.compare JSON
  lines = [
    ln for r in compared for ln in compare_report.format_table(r).splitlines()
  ]
  made = {line for line in lines + markdown if line.startswith("|")}
  labels = {label for r in compared for label in r["estimators"]}
  for line in body.splitlines():
    cells = line.split("|")
    if line.startswith("| ") and len(cells) > 2 and cells[1].strip() in labels:
      # An estimator's row: exactly as a table made from the JSON has it.
      assert line in made, f"{page}: row not made from {files}: {line}"


def test_readme_is_a_guide_of_at_most_300_lines():
  lines = read(README).splitlines()
  assert len(lines) <= README_MAX_LINES, (
    f"README.md has {len(lines)} lines (at most {README_MAX_LINES}); move "
    "detail to a page under docs/"
  )


def test_every_readme_results_table_number_is_fenced():
  text = read(README)
  assert RESULTS_HEADING in text, f"README.md lost {RESULTS_HEADING!r}"
  start = text.index(RESULTS_HEADING)
  end = text.find("\n## ", start + len(RESULTS_HEADING))
  section = text[start : end if end >= 0 else len(text)]
  fenced = [m.span() for m in FENCE.finditer(section)]
  rows, offset = 0, 0
  for line in section.splitlines(keepends=True):
    if line.startswith("|") and NUMBER.findall(prose(line)):
      rows += 1
      inside = any(a <= offset and offset + len(line) <= b for a, b in fenced)
      assert inside, f"README results row outside a numbers fence: {line}"
    offset += len(line)
  assert rows >= 5, "the README's results at a glance lost their tables"


# A Markdown link or image, `[text](target)` (an optional title after the
# target), or a reference definition, `[label]: target`.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", re.M)


def relative_links(text: str) -> list[str]:
  """The relative link targets of a page, without anchors; not in code."""
  text = re.sub(r"```.*?```", " ", text, flags=re.S)
  text = re.sub(r"`[^`]*`", " ", text)
  out = []
  for target in LINK.findall(text) + REFERENCE.findall(text):
    if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
      continue  # http(s), mailto and other schemes; anchors on the page
    out.append(target.split("#")[0])
  return out


@pytest.mark.parametrize("page", PAGES, ids=page_name)
def test_every_relative_link_resolves(page):
  links = relative_links(read(page))
  missing = [
    link
    for link in links
    if not os.path.exists(os.path.join(os.path.dirname(page), link))
  ]
  assert not missing, f"{page_name(page)} links to missing files: {missing}"
  if page == README:
    assert links, "the README lost its links to the pages"


def test_link_finding():
  text = (
    "![a](figures/x.png) [b](../README.md#top) [c](https://x.org/a.md) "
    "[d](#here) `[e](code.md)`\n[f]: docs/f.md\n```\n[g](block.md)\n```"
  )
  assert relative_links(text) == ["figures/x.png", "../README.md", "docs/f.md"]


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
