"""The tutorial notebooks: stored without outputs, and each runs top to bottom without error.

Notebooks execute with nbclient in the ``python3`` kernel from the repository root. jupyter_client
starts a kernelspec whose command is ``python`` with the interpreter running this test, so the
kernel is the same environment (checked by ``test_kernel_is_this_python``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
IDS = [path.name for path in NOTEBOOKS]


def _client(nb) -> NotebookClient:
    # a cell's limit: 05's collapse study cell took over 300 s with both cores also training (not a speed check)
    return NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})


def test_notebooks_exist():
    assert len(NOTEBOOKS) >= 7, [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has stored outputs"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"


def test_kernel_is_this_python():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys; print(sys.executable)")])
    _client(nb).execute()
    printed = "".join(out.get("text", "") for out in nb.cells[0].outputs).strip()
    assert Path(printed).resolve() == Path(sys.executable).resolve(), (printed, sys.executable)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_runs_without_error(path):
    nb = nbformat.read(path, as_version=4)
    _client(nb).execute()  # raises CellExecutionError with the failing cell's traceback
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.get("output_type") == "error"
    ]
    assert not errors, errors
