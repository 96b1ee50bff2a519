"""The `mimflow` command and the quickstart it runs (the README's main command)."""

import re
import subprocess
import sys

from mimflow._cli import main


def _rows(text: str) -> dict[tuple[str, int], tuple[str, float, list[float], str]]:
    """Parse the quickstart's comparison tables into
    {(link, saddle): (law, measured slope, [t/pred per d], verdict)}."""
    rows, name = {}, None
    for line in text.splitlines():
        if line.startswith("== "):
            name = line[3:].strip()
        match = re.match(
            r"^ +(\d) +(log d|d\^\d+) +(?:< [\d.]+|[\d.]+ ± [\d.]+) +(-?[\d.]+) \[.*?\] +(.*?) +(agrees|DISAGREES)$",
            line,
        )
        if match:
            ratios = [float(x) for x in match.group(4).split()]
            rows[(name, int(match.group(1)))] = (match.group(2), float(match.group(3)), ratios, match.group(5))
    return rows


def test_quickstart_prints_theory_and_comparison(capsys):
    """The README's main command prints each link's predicted saddle sequence and the
    measured slopes beside it; the numbers agree with DESIGN §2."""
    assert main(["quickstart", "--seeds", "3", "--dims", "100", "10000"]) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    assert set(rows) == {
        ("staircase h1(z1) + z1 z2", 1),
        ("staircase h1(z1) + z1 z2", 2),
        ("h1(z1) + h3(z2)", 1),
        ("h1(z1) + h3(z2)", 2),
    }
    assert out.count("information exponent 1, 2 saddles") == 2  # the theory summaries
    for (name, saddle), (law, slope, ratios, verdict) in rows.items():
        expected = "d^2" if (name, saddle) == ("h1(z1) + h3(z2)", 2) else "log d"
        assert law == expected and verdict == "agrees" and len(ratios) == 2
        if law == "log d":
            assert slope < 0.3
        else:
            assert abs(slope - 2.0) < 0.15
    # first saddle: log d / (2α1²) = ½ log d up to O(1) (DESIGN §2): t/pred between 0.5 and 1.2
    for name in ("staircase h1(z1) + z1 z2", "h1(z1) + h3(z2)"):
        assert all(0.5 < r < 1.2 for r in rows[(name, 1)][2])


def test_quickstart_bad_input_exit_code_2(capsys):
    assert main(["quickstart", "--seeds", "0"]) == 2
    err = capsys.readouterr().err
    assert "seeds" in err and len(err.strip().splitlines()) == 1


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "mimflow", "--help"], capture_output=True, text=True, check=True).stdout
    assert "quickstart" in out
