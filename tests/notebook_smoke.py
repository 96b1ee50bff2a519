"""Running a notebook at its reduced size, shared by the notebook test files (split
so that `pytest -n auto --dist loadfile` spreads the notebooks over the workers)."""

import importlib.util
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
_spec = importlib.util.spec_from_file_location("notebook_runner", NOTEBOOKS / "execute.py")
runner = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(runner)


def run_at_reduced_size(name: str) -> None:
    """Execute `notebooks/NAME.ipynb` top to bottom with `MIMFLOW_NOTEBOOK_SMOKE=1`; its
    own asserts check its headline numbers, and it must say that it saw the switch."""
    notebook = runner.execute(NOTEBOOKS / f"{name}.ipynb", smoke=True)
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert all(cell["execution_count"] is not None for cell in code)
    printed = "".join(
        "".join(output.get("text", ""))
        for cell in code
        for output in cell["outputs"]
        if output["output_type"] == "stream"
    )
    assert "smoke size" in printed  # the notebook saw the reduced-size switch
