"""Every notebook in notebooks/ runs top to bottom without an error.

Each `.ipynb` is executed in a fresh kernel with nbclient, from the
notebooks directory, with a per-cell timeout; any exception fails the test
with the cell that raised. The `.py` files (jupytext percent format) are
the reviewed sources: the paired `.ipynb` must hold the same code and no
outputs.
"""

import os
import pathlib
import sys

import jupytext
import nbclient
import nbformat
import pytest

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NAMES = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))


def test_there_are_notebooks():
  assert {
    "01_quickstart",
    "02_use_a_learned_optimizer",
    "03_estimators",
  } <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_paired_and_stripped(name):
  notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
  for cell in notebook.cells:
    if cell.cell_type == "code":
      assert not cell.outputs, f"{name}.ipynb is committed with outputs"
      assert cell.execution_count is None
  source = jupytext.read(NOTEBOOKS / f"{name}.py")

  def code(nb):
    return [c.source for c in nb.cells if c.cell_type == "code"]

  assert code(notebook) == code(source), (
    f"{name}.ipynb and {name}.py differ: run "
    f"`jupytext --sync notebooks/{name}.py`"
  )


# Slow: each notebook meta-trains and trains models in a fresh kernel, what
# tests/test_train.py and tests/test_export.py check in the default run.
@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, monkeypatch, request):
  notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
  # The kernel inherits this environment: CPU only, this interpreter's
  # packages, and the repository importable.
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  # A persistent XLA compilation cache (in pytest's cache directory;
  # `pytest --cache-clear` empties it): notebooks 01 and 02 meta-train the
  # same tiny config, so the second one reuses the first one's programs, and
  # later runs of the suite compile little. It changes no result.
  monkeypatch.setenv(
    "JAX_COMPILATION_CACHE_DIR",
    str(request.config.cache.mkdir("jax_compilation_cache")),
  )
  root = str(NOTEBOOKS.parent)
  monkeypatch.setenv(
    "PYTHONPATH",
    os.pathsep.join(
      [root]
      + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    ),
  )
  client = nbclient.NotebookClient(
    notebook,
    timeout=300,
    kernel_name="python3",
    resources={"metadata": {"path": str(NOTEBOOKS)}},
  )
  # Run the kernel with this interpreter (its virtualenv), not whatever
  # `python3` a global kernelspec names.
  client.kernel_manager_class = _kernel_manager_class()
  client.execute()


def _kernel_manager_class():
  # pylint: disable-next=g-import-not-at-top
  from jupyter_client.manager import KernelManager

  class ThisPythonKernelManager(KernelManager):
    def format_kernel_cmd(self, extra_arguments=None):
      cmd = super().format_kernel_cmd(extra_arguments)
      if cmd and os.path.basename(cmd[0]).startswith("python"):
        cmd[0] = sys.executable
      return cmd

  return ThisPythonKernelManager
