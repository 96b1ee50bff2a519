"""Every notebook in `notebooks/` runs top to bottom at its reduced size
(`MIMFLOW_NOTEBOOK_SMOKE=1`) without error: 01, 02, 03 and 06 here, the two heaviest
(04, 05) in files of their own so that the test workers share the notebooks out. The
notebooks assert their own headline numbers against independent computations (closed
forms, NumPy, the theory's laws), so a wrong result fails here too. The saved notebooks carry the outputs of a full-size run."""

import json

import pytest
from notebook_smoke import run_at_reduced_size, runner

EXPECTED = [
    "01_saddle_to_saddle",
    "02_escape_time_scaling",
    "03_planted_vs_two_timescale",
    "04_finite_samples",
    "05_differentiable_sweeps",
    "06_gpu_batch",
]


def test_the_six_notebooks_are_there_and_saved_executed():
    """The saved notebooks are nbformat 4 with every code cell executed in order, no
    error output, and at least one figure each (a reader sees the plots without running)."""
    paths = runner.notebooks()
    assert [path.stem for path in paths] == EXPECTED
    for path in paths:
        notebook = json.loads(path.read_text())
        assert notebook["nbformat"] == 4
        code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
        assert [cell["execution_count"] for cell in code] == list(range(1, len(code) + 1)), path.name
        outputs = [output for cell in code for output in cell["outputs"]]
        assert not any(output["output_type"] == "error" for output in outputs), path.name
        if path.stem != "06_gpu_batch":
            assert any("image/png" in output.get("data", {}) for output in outputs), f"{path.name} has no figure"
        assert "smoke size" not in json.dumps(outputs), f"{path.name} was saved from a reduced-size run"


@pytest.mark.parametrize("name", [name for name in EXPECTED if name[:2] not in ("04", "05")])
def test_notebook_runs_at_reduced_size(name):
    run_at_reduced_size(name)


def test_runner_records_outputs_and_stops_at_a_failing_cell(tmp_path):
    """Printed text, a final expression's value and figures are recorded as Jupyter
    would; a cell that raises (a failed headline assertion) stops the run, naming the
    notebook and the cell."""

    def code(source):
        return {"cell_type": "code", "metadata": {}, "source": source, "outputs": [], "execution_count": None}

    cells = [
        code("import os\nx = 1\nprint('hello', os.environ['MIMFLOW_NOTEBOOK_SMOKE'])\nx + 41"),
        code("from matplotlib.figure import Figure\nfigure = Figure()\nfigure.subplots().plot([0, 1])\nfigure"),
        {"cell_type": "markdown", "metadata": {}, "source": "text"},
        code("assert x == 2, 'slope off'"),
    ]
    path = tmp_path / "99_bad.ipynb"
    path.write_text(json.dumps({"cells": cells[:3], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    done = runner.execute(path, smoke=True)
    first, second = done["cells"][0], done["cells"][1]
    assert first["outputs"][0] == {"output_type": "stream", "name": "stdout", "text": ["hello 1\n"]}
    assert first["outputs"][1]["data"]["text/plain"] == ["42"] and first["execution_count"] == 1
    assert second["outputs"][0]["data"]["image/png"] and second["execution_count"] == 2
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    with pytest.raises(runner.NotebookError, match=r"99_bad.ipynb, cell 4 .*AssertionError: slope off"):
        runner.execute(path, smoke=True)
