"""The `mimflow` command and the quickstart it runs (the README's main command)."""

import math
import re
import subprocess
import sys

import numpy as np
import pytest

from mimflow._cli import main


def _rows(text: str) -> dict[tuple[str, int], list[float]]:
    """Parse the quickstart table into {(link, direction): [t_esc, t/law, t_esc, t/law, ...]}."""
    rows, name = {}, None
    for line in text.splitlines():
        match = re.match(r"^(.{26}) +(\d) +(log d|d\^\d+) +(.*)$", line)
        if match:
            name = match.group(1).strip() or name
            rows[(name, int(match.group(2)))] = [float(x) for x in match.group(4).split()]
    return rows


def test_quickstart_table(capsys):
    assert main(["quickstart", "--seeds", "3", "--dims", "100", "10000"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert set(rows) == {
        ("staircase h1(z1) + z1 z2", 1),
        ("staircase h1(z1) + z1 z2", 2),
        ("h1(z1) + h3(z2)", 1),
        ("h1(z1) + h3(z2)", 2),
    }
    for (name, direction), (t_small, ratio_small, t_large, ratio_large) in rows.items():
        law = (lambda d: d**2) if (name, direction) == ("h1(z1) + h3(z2)", 2) else math.log
        # the ratio column is the escape time divided by the printed law
        np.testing.assert_allclose([ratio_small, ratio_large], [t_small / law(100), t_large / law(1e4)], rtol=1e-3)
        assert t_large > t_small
    # first directions: log d / (2 α1²) = ½ log d up to O(1) (DESIGN §2), so t/log d is in (0.2, 0.6)
    for name in ("staircase h1(z1) + z1 z2", "h1(z1) + h3(z2)"):
        assert 0.2 < rows[(name, 1)][3] < 0.6
    # the d² saddle: t/d² is an O(1) constant whatever d (1/12 for m0 = d^{-1/2}; larger for random m0)
    assert rows[("h1(z1) + h3(z2)", 2)][3] / rows[("h1(z1) + h3(z2)", 2)][1] == pytest.approx(1.0, abs=0.3)


def test_quickstart_bad_input_exit_code_2(capsys):
    assert main(["quickstart", "--seeds", "0"]) == 2
    err = capsys.readouterr().err
    assert "seeds" in err and len(err.strip().splitlines()) == 1


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "mimflow", "--help"], capture_output=True, text=True, check=True).stdout
    assert "quickstart" in out
