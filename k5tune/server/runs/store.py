"""The run history: one row per run in SQLite (stdlib sqlite3), so it survives a server restart."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from k5tune.server.paths import ProjectPaths

QUEUED, RUNNING, STOPPING = "queued", "running", "stopping"
COMPLETED, STOPPED, FAILED, CANCELLED = "completed", "stopped", "failed", "cancelled"
ACTIVE = (RUNNING, STOPPING)
FINISHED = (COMPLETED, STOPPED, FAILED, CANCELLED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    output_dir TEXT NOT NULL,
    config_path TEXT NOT NULL,
    resume INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    started_at TEXT,
    ended_at TEXT,
    exit_code INTEGER,
    log_path TEXT NOT NULL DEFAULT '',
    config_snapshot TEXT NOT NULL DEFAULT '{}',
    error TEXT,
    pid INTEGER,
    stop_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_by_folder ON runs (output_dir, status);
"""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class Run:
    id: int
    output_dir: str  # absolute, resolved: the queue key
    config_path: str  # as the user named it, relative to the project
    resume: bool
    status: str
    created_at: str
    started_at: str | None
    ended_at: str | None
    exit_code: int | None
    log_path: str
    config_snapshot: str  # JSON: both files as they were when the run was queued
    error: str | None
    pid: int | None
    stop_requested: bool

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def folder(self) -> Path:
        """The run's own folder under the server's state: its log, events and config copies."""
        return Path(self.log_path).parent

    @property
    def events_path(self) -> Path:
        """The structured events the run's `k5tune train` writes (K5TUNE_EVENTS names it)."""
        return self.folder / "events.jsonl"

    def snapshot(self) -> dict:
        try:
            return json.loads(self.config_snapshot)
        except json.JSONDecodeError:
            return {}

    def to_dict(self, paths: ProjectPaths) -> dict:
        data = asdict(self)
        data["output_dir"] = paths.relative(self.output_dir)
        data["log_path"] = paths.relative(self.log_path) if self.log_path else ""
        data["config_snapshot"] = self.snapshot()
        data["finished"] = self.finished
        return data


class RunStore:
    """The `runs` table. A connection per call: watcher threads and request handlers share it safely."""

    def __init__(self, db_path: Path):
        self.path = Path(db_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.row_factory = sqlite3.Row
        return db

    @staticmethod
    def _run(row: sqlite3.Row) -> Run:
        data = dict(row)
        data["resume"] = bool(data["resume"])
        data["stop_requested"] = bool(data["stop_requested"])
        return Run(**data)

    def insert(self, **fields) -> int:
        columns = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        with self._connect() as db:
            cursor = db.execute(f"INSERT INTO runs ({columns}) VALUES ({marks})", tuple(fields.values()))
            return int(cursor.lastrowid)

    def update(self, run_id: int, **fields) -> None:
        assignments = ", ".join(f"{name} = ?" for name in fields)
        with self._connect() as db:
            db.execute(f"UPDATE runs SET {assignments} WHERE id = ?", (*fields.values(), run_id))

    def get(self, run_id: int) -> Run | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return self._run(row) if row else None

    def list(self, statuses: tuple[str, ...] | None = None, output_dir: str | None = None) -> list[Run]:
        query, params = "SELECT * FROM runs WHERE 1=1", []
        if statuses:
            query += f" AND status IN ({', '.join('?' for _ in statuses)})"
            params += list(statuses)
        if output_dir is not None:
            query += " AND output_dir = ?"
            params.append(output_dir)
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY id", params).fetchall()
        return [self._run(row) for row in rows]
