#!/usr/bin/env python3
"""Execute the notebooks top to bottom in this Python process and save their outputs.

    python notebooks/execute.py                  # every notebook, full size, outputs saved
    python notebooks/execute.py 02 05            # the notebooks whose names start so
    python notebooks/execute.py --smoke          # reduced size (MIMFLOW_NOTEBOOK_SMOKE=1), nothing saved

The notebooks are plain Jupyter notebooks (nbformat 4): they open and run in Jupyter
as they are. This runner needs no kernel (no ipykernel, nbclient or nbformat, none of
which mimflow depends on): each code cell is executed in one shared namespace with the
notebook's folder as the working directory, the way a kernel would, and its outputs
(printed text, the value of a final expression, matplotlib figures as PNG) are recorded
in the notebook's own JSON format. A cell that raises stops the run with an error
naming the notebook and the cell; the notebooks `assert` their headline numbers, so a
wrong result fails the run as well (`tests/test_notebooks.py` runs them at the reduced
size).
"""

from __future__ import annotations

import argparse
import ast
import base64
import builtins
import contextlib
import io
import json
import os
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
SMOKE_VARIABLE = "MIMFLOW_NOTEBOOK_SMOKE"


class NotebookError(RuntimeError):
    """A cell raised: the notebook, the cell's number and first line, and the error."""


def notebooks(prefixes: list[str] | None = None) -> list[Path]:
    """The notebooks in this folder, in order, optionally those whose names start with a prefix."""
    paths = sorted(HERE.glob("[0-9][0-9]_*.ipynb"))
    if prefixes:
        paths = [path for path in paths if any(path.name.startswith(prefix) for prefix in prefixes)]
    return paths


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def _figure_output(figure) -> dict:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=72, bbox_inches="tight")
    return {
        "output_type": "display_data",
        "data": {
            "image/png": base64.b64encode(buffer.getvalue()).decode("ascii"),
            "text/plain": [repr(figure)],
        },
        "metadata": {},
    }


def _is_figure(value: object) -> bool:
    figure_type = getattr(sys.modules.get("matplotlib.figure"), "Figure", None)
    return figure_type is not None and isinstance(value, figure_type)


class _Cell:
    """Collects one cell's outputs in order: text streams between displays."""

    def __init__(self) -> None:
        self.outputs: list[dict] = []
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()

    def flush(self) -> None:
        for name, buffer in (("stdout", self.stdout), ("stderr", self.stderr)):
            text = buffer.getvalue()
            if text:
                self.outputs.append({"output_type": "stream", "name": name, "text": _lines(text)})
            buffer.seek(0)
            buffer.truncate()

    def display(self, *values: object) -> None:
        self.flush()
        for value in values:
            if _is_figure(value):
                self.outputs.append(_figure_output(value))
            else:
                self.outputs.append(
                    {"output_type": "display_data", "data": {"text/plain": _lines(repr(value))}, "metadata": {}}
                )


def _run_cell(source: str, namespace: dict, cell: _Cell, filename: str):
    """Execute `source`; the value of a final expression statement is returned (as in Jupyter)."""
    tree = ast.parse(source, filename=filename)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, filename, "exec"), namespace)
    if last is None:
        return None
    return eval(compile(ast.Expression(last.value), filename, "eval"), namespace)


def execute(path: str | os.PathLike, smoke: bool = False) -> dict:
    """Run the notebook at `path` top to bottom and return it with its outputs filled in.

    `smoke=True` sets `MIMFLOW_NOTEBOOK_SMOKE=1` for the run: the notebooks read it and
    run their experiments at a reduced size (their assertions still apply). Raises
    `NotebookError` naming the cell when a cell raises.
    """
    path = Path(path).resolve()
    notebook = json.loads(path.read_text())
    namespace: dict = {"__name__": "__main__"}
    previous_env, previous_cwd = os.environ.get(SMOKE_VARIABLE), Path.cwd()
    previous_display = getattr(builtins, "display", None)
    os.environ[SMOKE_VARIABLE] = "1" if smoke else "0"
    os.chdir(path.parent)
    count = 0
    try:
        for number, cell in enumerate(notebook["cells"], start=1):
            if cell["cell_type"] != "code":
                continue
            count += 1
            source = _source(cell)
            recorder = _Cell()
            builtins.display = recorder.display  # Jupyter's `display`, a builtin in IPython
            start = time.perf_counter()
            try:
                with contextlib.redirect_stdout(recorder.stdout), contextlib.redirect_stderr(recorder.stderr):
                    value = _run_cell(source, namespace, recorder, f"<{path.name} cell {number}>")
            except BaseException as error:
                recorder.flush()
                if isinstance(error, KeyboardInterrupt):
                    raise
                first = source.strip().splitlines()[0] if source.strip() else ""
                printed = "".join(
                    "".join(output["text"]) for output in recorder.outputs if output["output_type"] == "stream"
                )
                raise NotebookError(
                    f"{path.name}, cell {number} ({first!r}) raised {type(error).__name__}: {error}\n"
                    f"--- its output ---\n{printed[-4000:]}\n--- traceback ---\n{traceback.format_exc()}"
                ) from error
            recorder.flush()
            if value is not None:
                if _is_figure(value):
                    recorder.outputs.append(_figure_output(value))
                else:
                    recorder.outputs.append(
                        {
                            "output_type": "execute_result",
                            "execution_count": count,
                            "data": {"text/plain": _lines(repr(value))},
                            "metadata": {},
                        }
                    )
            cell["outputs"] = recorder.outputs
            cell["execution_count"] = count
            cell.setdefault("metadata", {})["execution_time_s"] = round(time.perf_counter() - start, 2)
    finally:
        if previous_display is None:
            with contextlib.suppress(AttributeError):
                del builtins.display
        else:
            builtins.display = previous_display
        os.chdir(previous_cwd)
        if previous_env is None:
            os.environ.pop(SMOKE_VARIABLE, None)
        else:
            os.environ[SMOKE_VARIABLE] = previous_env
        figure_module = sys.modules.get("matplotlib.pyplot")
        if figure_module is not None:
            figure_module.close("all")
    return notebook


def save(notebook: dict, path: str | os.PathLike) -> None:
    """Write `notebook` (nbformat 4 JSON, one-space indent as Jupyter does) atomically."""
    path = Path(path)
    temporary = path.with_suffix(".ipynb.tmp")
    temporary.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prefixes", nargs="*", help="run the notebooks whose names start with these")
    parser.add_argument("--smoke", action="store_true", help="reduced size, outputs not saved")
    args = parser.parse_args(argv)
    paths = notebooks(args.prefixes)
    if not paths:
        print(f"no notebook matches {args.prefixes}", file=sys.stderr)
        return 2
    for path in paths:
        start = time.perf_counter()
        try:
            notebook = execute(path, smoke=args.smoke)
        except NotebookError as error:
            print(error, file=sys.stderr)
            return 1
        if not args.smoke:
            save(notebook, path)
        print(f"{path.name}: {time.perf_counter() - start:.1f} s{'' if args.smoke else ', saved'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
