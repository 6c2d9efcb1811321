"""Training runs of the web UI: the history (store.py), the processes and their queue (manager.py), and
each run's state and outcome from the structured events it writes (status.py)."""

from k5tune.server.runs.manager import RunManager
from k5tune.server.runs.status import RunEvents, RunState, outcome, read_state
from k5tune.server.runs.store import ACTIVE, FINISHED, Run, RunStore

__all__ = ["ACTIVE", "FINISHED", "Run", "RunEvents", "RunManager", "RunState", "RunStore", "outcome", "read_state"]
