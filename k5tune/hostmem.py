"""The machine's CPU memory, and how much of it offloading may pin.

Group offload and activation offload keep tensors in pinned (page-locked) CPU memory, which the kernel
cannot swap out: a run that pins more than the machine has is killed (or CUDA's host allocation fails)
partway through its first step. The wizard and the web UI recommend no preset that pins more than
`pinnable_gib`; training warns before it starts where its predicted pinned memory does not fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# What the rest of the machine needs beside the pinned tensors: the OS, the training process itself
# (Python, CUDA's context, the data loader, the latent cache being read) and whatever else runs
OTHER_GIB = 6.0
OTHER_SHARE = 0.10


@dataclass(frozen=True)
class HostMemory:
    total_gib: float
    available_gib: float  # free now, page cache included (the kernel's MemAvailable)

    @property
    def pinnable_gib(self) -> float:
        """What offloading may pin on this machine, all processes together: the total less ~6 GiB and
        10 % for everything else."""
        return max(0.0, self.total_gib * (1 - OTHER_SHARE) - OTHER_GIB)


# A container's memory limit (cgroup v2, then v1): pinned pages count against it, and /proc/meminfo shows
# the host's memory, not the container's
CGROUP_LIMITS = ((Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current")),
                 (Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"), Path("/sys/fs/cgroup/memory/memory.usage_in_bytes")))


def host_memory(meminfo: Path = Path("/proc/meminfo"), cgroups=CGROUP_LIMITS) -> HostMemory | None:
    """This machine's memory (Linux), within its container's limit where one is set; None where it
    cannot be read."""
    try:
        fields = dict(line.split(":", 1) for line in meminfo.read_text().splitlines() if ":" in line)
        kib = {name: int(fields[name].split()[0]) for name in ("MemTotal", "MemAvailable")}
    except (OSError, KeyError, ValueError, IndexError):
        return None
    total, available = kib["MemTotal"] / 2**20, kib["MemAvailable"] / 2**20
    for limit_file, usage_file in cgroups:
        try:
            limit, usage = int(limit_file.read_text().strip()) / 2**30, int(usage_file.read_text().strip()) / 2**30
        except (OSError, ValueError):  # ("max": no limit; a missing file: not this cgroup version)
            continue
        if limit < total:
            total, available = limit, min(available, max(0.0, limit - usage))
        break
    return HostMemory(total, available)


def pinned_memory_problem(need_gib: float, memory: HostMemory | None, processes: int = 1) -> str | None:
    """Why pinning `need_gib` per process (`processes` of them on this machine) may fail here, or None."""
    if memory is None or need_gib <= 0:
        return None
    total = need_gib * processes
    per = f" ({need_gib:.1f} GiB in each of {processes} processes)" if processes > 1 else ""
    if total > memory.pinnable_gib:
        return (f"offloading will pin ~{total:.0f} GiB of CPU memory{per}, more than this machine can spare "
                f"({memory.total_gib:.0f} GiB in all, ~{memory.pinnable_gib:.0f} GiB for pinning): the run may be "
                "killed in its first step; fewer frames or a lower resolution, or `k5tune estimate` for settings "
                "without pinned memory")
    if total > memory.available_gib:
        return (f"offloading will pin ~{total:.0f} GiB of CPU memory{per}, more than is free now "
                f"({memory.available_gib:.0f} GiB): close other programs, or the run may be killed")
    return None
