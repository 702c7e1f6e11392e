"""The package's shape: concepts as subpackages, no import cycle, small modules.

These are the structural promises of `../shared/design.md`'s layout: a
reader of `ls lopt/` sees the architecture; no two modules import each other,
directly or around a circle (function-level imports included: a cycle hidden
inside a function is still a cycle of the design); no module is longer than
a reader takes in at one sitting; one package, `lopt.checkpoint`, imports
orbax; and the public surface is what `lopt/__init__.py` says.
"""

import ast
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = REPO / "lopt"
MAX_LINES = 500
SUBPACKAGES = {
  "systems",
  "estimators",
  "tasks",
  "learned",
  "train",
  "checkpoint",
  "suite",
  "compare",
  "bench",
}


def module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(REPO).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def modules() -> dict[str, pathlib.Path]:
  return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: pathlib.Path, known: set[str]) -> set[str]:
  """The lopt modules that `path` imports, anywhere in the file.

  `from lopt.x import y` is an import of the module `lopt.x.y` when that is
  a module, else of `lopt.x` (a name from its `__init__`); a package's
  submodule imported through it does not count as importing the package.
  """
  this = module_name(path)
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name in known}
    elif isinstance(node, ast.ImportFrom) and node.module:
      if node.level:  # relative imports are not used in lopt
        raise AssertionError(f"{path}: relative import of {node.module}")
      for alias in node.names:
        sub = f"{node.module}.{alias.name}"
        if sub in known:
          found.add(sub)
        elif node.module in known:
          found.add(node.module)
  found.discard(this)
  return found


def import_graph() -> dict[str, set[str]]:
  mods = modules()
  return {name: imports(path, set(mods)) for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle of `graph` as a path `a, b, ..., a`, or None."""
  state: dict[str, int] = {}  # 1: on the current path, 2: done
  path: list[str] = []

  def visit(node: str) -> list[str] | None:
    state[node] = 1
    path.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 1:
        return path[path.index(nxt) :] + [nxt]
      if nxt not in state:
        cycle = visit(nxt)
        if cycle:
          return cycle
    path.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node)
      if cycle:
        return cycle
  return None


def test_find_cycle_finds_a_circle_and_passes_a_tree():
  # The checker itself: a three-module circle is found, a diamond is not.
  circle = {"a": {"b"}, "b": {"c"}, "c": {"a"}}
  assert find_cycle(circle) == ["a", "b", "c", "a"]
  assert (
    find_cycle({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}) is None
  )


def test_no_import_cycle():
  graph = import_graph()
  assert len(graph) > 50, "the package was not found"
  cycle = find_cycle(graph)
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_are_seen_inside_functions():
  # A function-level import is an edge too (the parser walks the whole file).
  graph = import_graph()
  assert "lopt.validation" in graph["lopt.console"]


def test_the_listing_shows_the_architecture():
  listed = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
  assert listed == SUBPACKAGES


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_module_is_oversized(name):
  lines = len(modules()[name].read_text().splitlines())
  assert lines <= MAX_LINES, f"{name} has {lines} lines (at most {MAX_LINES})"


def test_only_the_checkpoint_package_imports_orbax():
  importers = {
    name
    for name, path in modules().items()
    for node in ast.walk(ast.parse(path.read_text()))
    if isinstance(node, (ast.Import, ast.ImportFrom))
    and any(
      (getattr(node, "module", None) or a.name).startswith("orbax")
      for a in node.names
    )
  }
  assert importers, "nothing imports orbax: the check is broken"
  assert {n.split(".")[1] for n in importers} == {"checkpoint"}, importers


def test_public_surface():
  # In a fresh interpreter: what `import lopt` promises, loaded lazily, and
  # the estimators without orbax or tfds.
  code = """
import sys
import lopt
assert set(lopt.__all__) == {
  "load_optimizer", "estimators", "learned", "systems", "train"
}, lopt.__all__
assert callable(lopt.estimators.NRES)
assert callable(lopt.systems.Lorenz)
assert not any(m.startswith(("orbax", "tensorflow_datasets")) for m in sys.modules)
assert callable(lopt.load_optimizer)
assert callable(lopt.train.train_and_evaluate)
assert callable(lopt.learned.learned_optimizer)
assert lopt.learned.LOptConfig(kind="adaptive").kind == "adaptive"
"""
  result = subprocess.run(
    [sys.executable, "-c", code],
    capture_output=True,
    text=True,
    cwd=REPO,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    timeout=300,
  )
  assert result.returncode == 0, result.stderr
