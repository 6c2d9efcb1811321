"""One JSON row per benchmark result (what ran, where, when, with which code), and the tables made from
them: one per theme, card and date, so every published number traces back to its row and scenario."""

from __future__ import annotations

import datetime
import json
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


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
    return {"scenario": scenario, "theme": theme or "adhoc", "args": args, "card": report.get("device"),
            "date": datetime.date.today().isoformat(), "git_sha": _git_sha(), "versions": _versions(),
            "report": report}


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


def tables(rows: list[dict]) -> str:
    """Markdown: one table per (theme, card, date), a line per row: step seconds / peak GiB of ours, the
    stock step, the extra measurements, NABLA's mask density."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["theme"], row.get("card"), row.get("date"))].append(row)
    out = []
    for (theme, card, date), members in sorted(groups.items(), key=lambda item: tuple(map(str, item[0]))):
        out += [f"## {theme} — {card} — {date}", "",
                "| scenario | flavour | shape | ours s / GiB | stock s / GiB | forward s | CREPA s | density | sha |",
                "|---|---|---|---|---|---|---|---|---|"]
        for row in members:
            report = row["report"]
            density = (report.get("attention") or {}).get("mask_density")
            out.append(f"| {row['scenario'] or ' '.join(row['args'])} | {report.get('flavour')} | "
                       f"{report.get('resolution')}x{report.get('frames')} | {_cell(report, 'ours')} | "
                       f"{_cell(report, 'stock')} | {_cell(report, 'ours_forward')} | {_cell(report, 'ours_crepa')} | "
                       f"{'—' if density is None else f'{density:.3f}'} | {row.get('git_sha')} |")
        out.append("")
    return "\n".join(out)


def read_rows(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
