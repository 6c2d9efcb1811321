"""The published benchmark numbers stay traceable: every scenario's flags parse, every scenario that
benchmarks/results/HISTORY.md names exists, and the historical rows and tables are what the kept raw
reports give (benchmarks/tools/rows_from_reports.py --check)."""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path

import pytest

from k5tune.bench import rows
from k5tune.bench.scenarios import SCENARIOS
from k5tune.commands.bench import _plan, _tread, add_arguments

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _tool():
    spec = importlib.util.spec_from_file_location("rows_from_reports", ROOT / "benchmarks/tools/rows_from_reports.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_scenario_parses_into_a_plan(name):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(list(SCENARIOS[name].args))
    _tread(args.tread)
    if not args.model:  # a model folder (the tiny NABLA model) is read only when the scenario runs
        _plan(args)


def _history_rows() -> list[list[str]]:
    """The cells of every table row of HISTORY.md (header and separator lines left out)."""
    lines = (RESULTS / "HISTORY.md").read_text(encoding="utf-8").splitlines()
    cells = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines if line.startswith("| ")]
    return [row for row in cells if row[0] != "number"]


def test_history_names_scenarios_that_exist_and_reports_that_are_kept():
    table = _history_rows()
    assert len(table) > 60 and all(len(row) == 7 for row in table)
    named = set()
    for number, _where, _date, _card, _run, report, scenario in table:
        if not scenario.startswith("none") and scenario != "the scenario of each row":
            names = set(re.findall(r"`([^`]+)`", scenario))
            assert names, number
            named |= names
        folder = None
        for path in re.findall(r"`([^`]+\.(?:jsonl?|txt))(?:#\d+)?`", report):
            if "/" in path:
                folder = path.split("/")[0]
            assert (RESULTS / (path if "/" in path else f"{folder}/{path}")).is_file(), path
    assert named - set(SCENARIOS) == set()
    assert {"run17-lite-stock-tread", "lite-rollout-1", "lite-10s-dense"} <= named


def test_historical_rows_and_tables_are_current():
    """rows.jsonl and tables/ are what rows_from_reports.py makes of the reports: each row's scenario agrees
    with what its report ran, and the committed tables are `k5tune bench --tables` of those rows."""
    tool = _tool()
    assert tool.main(["--check"]) == 0
    made = rows.read_rows(RESULTS / "rows.jsonl")
    assert all(row["scenario"] in SCENARIOS for row in made) and len(made) >= 45
    tables = sorted((RESULTS / "tables").glob("*.md"))
    bodies = [path.read_text(encoding="utf-8").split("\n\n", 1)[1] for path in tables]
    assert sorted(bodies) == sorted(rows.tables(group) for group in rows.groups(made).values())
    assert "\n".join(rows.tables(group) for group in rows.groups(made).values()) == rows.tables(made)


def test_a_report_that_disagrees_with_its_scenario_is_named():
    tool = _tool()
    report = rows.read_rows(RESULTS / "rows.jsonl")[0]["report"]  # run 1: stock beside ours, 5 steps
    assert tool.mismatches(report, list(SCENARIOS["run1-lite-stock"].args)) == []
    problems = tool.mismatches(report, list(SCENARIOS["run3-lite-keep16"].args))
    assert any(p.startswith("steps:") for p in problems) and any(p.startswith("stock timed") for p in problems)


def test_a_row_names_the_code_that_ran(tmp_path):
    """A row's git sha is the code measured: the sender's commit on a copy of the tree (the lent GPU machine's
    .git is the session's first commit, not the tree's), "-dirty" when tracked files differ from HEAD."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                              capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "code.py")
    git("commit", "-q", "-m", "one")
    head = git("rev-parse", "--short", "HEAD")
    assert rows.code_version(env={}, cwd=tmp_path) == head
    (tmp_path / "notes.txt").write_text("untracked files are not the code")
    assert rows.code_version(env={}, cwd=tmp_path) == head
    (tmp_path / "code.py").write_text("x = 2\n")
    assert rows.code_version(env={}, cwd=tmp_path) == f"{head}-dirty"
    assert rows.code_version(env={rows.GIT_SHA_VARIABLE: "39664ee"}, cwd=tmp_path) == "39664ee"
