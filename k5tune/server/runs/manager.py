"""Training runs started from the web UI: each one a separate `k5tune train` process.

Why a process and not a thread: a crash (or an out-of-memory kill) of the training must not take the
server with it, and SIGINT gives the trainer's own clean stop (finish the step, save a checkpoint).
One run per output folder at a time; more runs for the same folder wait in a FIFO queue. The run
history lives in SQLite (store.py), so it survives a server restart, and a run still going when the
server comes back is adopted again. Each run writes its structured events to its own file
(K5TUNE_EVENTS); how it ended is read from them (status.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from k5tune.atomic import atomic_write_bytes
from k5tune.server.paths import ProjectPaths
from k5tune.server.policy import check_backends, check_config
from k5tune.server.runs.status import RunEvents, RunState, outcome, read_state
from k5tune.server.runs.store import (
    ACTIVE,
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    STOPPING,
    Run,
    RunStore,
    now_iso,
)
from k5tune.train.events import EVENTS_ENV


def _pid_is_training(pid: int | None) -> bool:
    """Is `pid` alive and still a k5tune process (not a recycled pid)?"""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        try:
            text = cmdline.read_bytes()
        except OSError:
            return False
        return b"k5tune" in text and b"train" in text
    return True


class RunManager:
    def __init__(self, paths: ProjectPaths, state_dir: Path, python: str | None = None,
                 poll_seconds: float = 1.0):
        self.paths = paths
        self.state_dir = Path(state_dir)
        self.runs_dir = self.state_dir / "runs"
        self.store = RunStore(self.state_dir / "server.sqlite3")
        self.python = python or sys.executable
        self.poll_seconds = poll_seconds
        self._procs: dict[int, subprocess.Popen] = {}
        self._events: dict[int, RunEvents] = {}
        self._lock = threading.RLock()
        self._closed = threading.Event()

    # --- queries -----------------------------------------------------------------------------------
    def get(self, run_id: int) -> Run | None:
        return self.store.get(run_id)

    def state(self, run: Run) -> RunState:
        """What the run's events said so far (each call reads only what was appended since the last)."""
        with self._lock:
            events = self._events.setdefault(run.id, RunEvents(run.events_path))
            events.read()
            return events.state

    def list(self) -> list[Run]:
        return list(reversed(self.store.list()))

    # --- submit / stop ----------------------------------------------------------------------------
    def submit(self, config_path: str = "config/config.json", resume: bool = False,
               resume_from: str | None = None) -> Run:
        """Queue a run of `k5tune train` on a snapshot of the config (and its dataset file); start it now
        unless another run holds the same output folder. `resume`: from the latest checkpoint, or from the
        checkpoint folder `resume_from`. Raises PathRefused for files outside the project."""
        config_file = self.paths.resolve(config_path)
        snapshot, output_dir, dataset_file = self._snapshot(config_file)
        if resume_from:
            checkpoint = self.paths.resolve(resume_from, must_exist=True, key="resume_from_checkpoint")
            snapshot["resume_from"] = self.paths.relative(checkpoint)
            resume = True
        with self._lock:
            run_id = self.store.insert(
                output_dir=str(output_dir), config_path=config_path, resume=int(resume), status=QUEUED,
                created_at=now_iso(), config_snapshot=json.dumps(snapshot),
            )
            folder = self.runs_dir / f"run-{run_id:06d}"
            folder.mkdir(parents=True, exist_ok=True)
            # the run trains on these copies: what was queued is what runs, even if the files change meanwhile
            if config_file.is_file():
                atomic_write_bytes(folder / "config.json", config_file.read_bytes())
            if dataset_file is not None:
                atomic_write_bytes(folder / "multidatabackend.json", dataset_file.read_bytes())
            self.store.update(run_id, log_path=str(folder / "train.log"))
            self._start_next(str(output_dir))
            return self.store.get(run_id)

    def _snapshot(self, config_file: Path) -> tuple[dict, Path, Path | None]:
        from k5tune.config.fields import canonical_config, config_field

        snapshot: dict = {"config_file": self.paths.relative(config_file)}
        raw: dict = {}
        try:
            parsed = json.loads(config_file.read_text(encoding="utf-8"))
            raw = canonical_config(parsed) if isinstance(parsed, dict) else {}
            snapshot["config"] = parsed
        except FileNotFoundError:
            snapshot["config"] = None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            snapshot["config"] = None
            snapshot["config_error"] = str(exc)
        check_config(self.paths, raw, snapshot["config_file"])  # PathRefused: the key that leads out
        output = raw.get("output_dir")
        output = output if isinstance(output, str) and output else config_field("output_dir").default
        output_dir = self.paths.resolve(output)  # PathRefused: outputs the server could not show
        dataset_name = raw.get("data_backend_config")
        if not isinstance(dataset_name, str):
            dataset_name = config_field("data_backend_config").default
        dataset_file = None
        if self.paths.inside(dataset_name) and self.paths.resolve(dataset_name).is_file():
            dataset_file = self.paths.resolve(dataset_name)
            snapshot["dataset_file"] = self.paths.relative(dataset_file)
            text = dataset_file.read_text(encoding="utf-8", errors="replace")
            try:
                snapshot["datasets"] = json.loads(text)
            except json.JSONDecodeError:
                snapshot["datasets_text"] = text
            else:
                check_backends(self.paths, snapshot["datasets"], snapshot["dataset_file"], walk=True)
        return snapshot, output_dir, dataset_file

    def stop(self, run_id: int, force: bool = False) -> Run | None:
        """Queued: cancelled. Running: SIGINT (the trainer finishes its step and saves a checkpoint);
        a second stop sends SIGINT again (the trainer then aborts at once); force sends SIGKILL."""
        with self._lock:
            run = self.store.get(run_id)
            if run is None or run.finished:
                return run
            if run.status == QUEUED:
                self.store.update(run_id, status=CANCELLED, ended_at=now_iso(), stop_requested=1)
                return self.store.get(run_id)
            self.store.update(run_id, status=STOPPING, stop_requested=1)
            if run.pid:
                try:
                    if force:
                        os.killpg(run.pid, signal.SIGKILL)
                    else:
                        os.kill(run.pid, signal.SIGINT)
                except (ProcessLookupError, PermissionError):
                    pass
            return self.store.get(run_id)

    # --- process life ------------------------------------------------------------------------------
    def _start_next(self, output_dir: str) -> None:
        with self._lock:
            if self._closed.is_set() or self.store.list(ACTIVE, output_dir):
                return
            queued = self.store.list((QUEUED,), output_dir)
            if queued:
                self._launch(queued[0])

    def _command(self, run: Run) -> list[str]:
        folder = run.folder
        config = folder / "config.json"
        if not config.is_file():  # nothing to copy: let `k5tune train` name the missing file itself
            config = self.paths.resolve(run.config_path)
        # an argument list, never a shell string: nothing a user typed is ever parsed by a shell
        command = [self.python, "-m", "k5tune.cli", "train", "--config", str(config)]
        if (folder / "multidatabackend.json").is_file():
            command += ["--data_backend_config", str(folder / "multidatabackend.json")]
        if run.resume:
            chosen = run.snapshot().get("resume_from")
            command += ["--resume_from_checkpoint", str(self.paths.resolve(chosen)) if chosen else "latest"]
        return command

    def _launch(self, run: Run) -> None:
        command = self._command(run)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", EVENTS_ENV: str(run.events_path)}
        log_path = Path(run.log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        run.events_path.unlink(missing_ok=True)  # the run's events alone (a reused state folder may hold old ones)
        with log_path.open("ab") as log:
            shown = " ".join(command[2:]).replace(str(self.paths.root) + os.sep, "")
            log.write(f"[k5tune server] run {run.id}: {shown}\n".encode())
            log.flush()
            try:
                # own session: Ctrl-C on the server's terminal does not reach the run, and a forced
                # stop can kill the run's whole process group
                proc = subprocess.Popen(command, cwd=self.paths.root, stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT, env=env, start_new_session=True)
            except OSError as exc:
                self.store.update(run.id, status=FAILED, started_at=now_iso(), ended_at=now_iso(),
                                  error=f"could not start k5tune train: {exc}")
                return
        self._procs[run.id] = proc
        self.store.update(run.id, status=RUNNING, started_at=now_iso(), pid=proc.pid)
        threading.Thread(target=self._watch, args=(run.id, proc), name=f"k5tune-run-{run.id}", daemon=True).start()

    def _watch(self, run_id: int, proc: subprocess.Popen) -> None:
        code = proc.wait()
        self._procs.pop(run_id, None)
        self._finish(run_id, code)

    def _adopt(self, run_id: int, pid: int) -> None:
        """A run started by an earlier server: not our child, so poll its pid until it is gone."""
        while _pid_is_training(pid) and not self._closed.is_set():
            time.sleep(self.poll_seconds)
        if not self._closed.is_set():
            self._finish(run_id, None)

    def _finish(self, run_id: int, exit_code: int | None) -> None:
        with self._lock:
            run = self.store.get(run_id)
            if run is None or run.finished:
                return
            status, error = outcome(run, exit_code, read_state(run.events_path))
            self.store.update(run_id, status=status, exit_code=exit_code, ended_at=now_iso(), error=error)
            output_dir = run.output_dir
        self._start_next(output_dir)

    def recover(self) -> None:
        """After a (re)start: adopt runs still going, close those that ended meanwhile, start the queues."""
        for run in self.store.list(ACTIVE):
            if run.id in self._procs:
                continue
            if _pid_is_training(run.pid):
                threading.Thread(target=self._adopt, args=(run.id, run.pid), daemon=True,
                                 name=f"k5tune-adopt-{run.id}").start()
            else:
                self._finish(run.id, None)
        for output_dir in sorted({run.output_dir for run in self.store.list((QUEUED,))}):
            self._start_next(output_dir)

    def close(self, kill_runs: bool = False, timeout: float = 10.0) -> None:
        """Stop starting queued runs. Running ones go on (they are adopted on the next start) unless
        `kill_runs`, which the tests use so that no process outlives them."""
        self._closed.set()
        if not kill_runs:
            return
        for proc in list(self._procs.values()):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for run_id, proc in list(self._procs.items()):
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
            self._procs.pop(run_id, None)

    def running_count(self) -> int:
        return len(self.store.list(ACTIVE))
