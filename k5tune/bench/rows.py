"""One JSON row per benchmark result (what ran, where, when, with which code), and the tables made from
them: one per theme, card and date, so every published number traces back to its row and scenario."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

GIT_SHA_VARIABLE = "K5TUNE_GIT_SHA"


def code_version(env: dict[str, str] | None = None, cwd: Path | None = None) -> str | None:
    """The code a row was measured with: $K5TUNE_GIT_SHA when set (a copy of the tree, such as the lent GPU
    machine's, whose .git is not the tree's: the sender names the commit), else this checkout's short HEAD,
    "-dirty" when tracked files differ from it (the sha alone would name other code); None without git."""
    given = (os.environ if env is None else env).get(GIT_SHA_VARIABLE, "").strip()
    if given:
        return given
    folder = cwd or Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=folder)
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                 text=True, timeout=10, cwd=folder)
    except (OSError, subprocess.SubprocessError):
        return None
    sha = head.stdout.strip()
    if head.returncode or not sha:
        return None
    return f"{sha}-dirty" if changed.returncode == 0 and changed.stdout.strip() else sha


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "diffusers", "transformers", "peft", "torchao"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def make_row(report: dict, scenario: str | None, theme: str | None, args: list[str]) -> dict[str, Any]:
    """The row of a result measured now, by this checkout: today's date, its git sha and library versions."""
    return recorded_row(report, scenario, theme, args, date=datetime.date.today().isoformat(), git_sha=code_version(),
                        versions=_versions())


def recorded_row(report: dict, scenario: str | None, theme: str | None, args: list[str], *, date: str,
                 git_sha: str | None, versions: dict[str, str], source: str | None = None) -> dict[str, Any]:
    """A row with its date, code (git sha, None where unknown) and versions given: a result measured earlier
    (benchmarks/tools/rows_from_reports.py), `source` naming the raw report it was made from."""
    row = {"scenario": scenario, "theme": theme or "adhoc", "args": args, "card": report.get("device"),
           "date": date, "git_sha": git_sha, "versions": versions, "report": report}
    return row | {"source": source} if source else row


def append_row(path: str | Path, row: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, default=str) + "\n")


def _cell(report: dict, name: str) -> str:
    measured = report.get(name)
    if not measured:
        return "—"
    peak = f" / {measured['peak_gib']:.2f}" if "peak_gib" in measured else ""
    return f"{measured['step_s']:.3f}{peak}"


def groups(rows: list[dict]) -> dict[tuple[str, str, str], list[dict]]:
    """The rows by (theme, card, date), in that order; each group's rows as given."""
    grouped: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        grouped[(row["theme"], row.get("card"), row.get("date"))].append(row)
    return dict(sorted(grouped.items(), key=lambda item: tuple(map(str, item[0]))))


def _model(report: dict) -> str:
    """The flavour, or the model folder where the report timed one (the tiny model) instead of a full-size config."""
    model = report.get("model")
    return report.get("flavour") if model in (None, "full-size, random weights") else model


def tables(rows: list[dict]) -> str:
    """Markdown: one table per (theme, card, date), a line per row: step seconds / peak GiB of ours (and its
    share of the card's measured matmul rate), the stock step, the extra measurements (TREAD's routed step,
    a forward, CREPA), NABLA's mask density, and the code (git sha; and the raw report of a row made from
    one)."""
    out = []
    for (theme, card, date), members in groups(rows).items():
        out += [f"## {theme} — {card} — {date}", "",
                "| scenario | flavour | shape | ours s / GiB | of matmul peak | stock s / GiB | TREAD s / GiB | forward s "
                "| CREPA s | density | sha / source |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in members:
            report = row["report"]
            density = (report.get("attention") or {}).get("mask_density")
            code = " · ".join(filter(None, (row.get("git_sha") or "—", row.get("source"))))
            fraction = (report.get("ours") or {}).get("fraction_of_matmul_peak")
            out.append(f"| {row['scenario'] or ' '.join(row['args'])} | {_model(report)} | "
                       f"{report.get('resolution')}x{report.get('frames')} | {_cell(report, 'ours')} | "
                       f"{'—' if fraction is None else f'{fraction:.3f}'} | {_cell(report, 'stock')} | "
                       f"{_cell(report, 'ours_tread')} | {_cell(report, 'ours_forward')} | "
                       f"{_cell(report, 'ours_crepa')} | {'—' if density is None else f'{density:.3f}'} | {code} |")
        out.append("")
    return "\n".join(out)


def read_rows(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
