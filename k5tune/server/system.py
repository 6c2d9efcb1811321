"""What the machine is doing: each GPU's memory and utilisation (from nvidia-smi, so the server never
initialises CUDA itself nor holds GPU memory), and the run queue."""

from __future__ import annotations

import shutil
import subprocess

QUERY = "index,name,memory.used,memory.total,utilization.gpu"


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None  # "[N/A]" on some cards


def gpus(timeout: float = 5.0) -> dict:
    """{"gpus": [...], "note": why there are none}; memory in MiB, utilisation in percent."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return {"gpus": [], "note": "no GPU (nvidia-smi not found)"}
    try:
        done = subprocess.run([smi, f"--query-gpu={QUERY}", "--format=csv,noheader,nounits"], capture_output=True,
                              text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"gpus": [], "note": f"no GPU information: {exc}"}
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        return {"gpus": [], "note": f"no GPU: {said[0] if said else 'nvidia-smi failed'}"}
    found = []
    for line in done.stdout.strip().splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) != 5:
            continue
        index, name, used, total, utilisation = parts
        found.append({"index": int(index) if index.isdigit() else index, "name": name,
                      "memory_used_mib": _number(used), "memory_total_mib": _number(total),
                      "utilization_percent": _number(utilisation)})
    return {"gpus": found, "note": None if found else "no GPU"}
