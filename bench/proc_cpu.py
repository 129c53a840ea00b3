"""CPU seconds of a process, for the benches that report CPU per role.

Imported by the bench scripts from their own directory (``python bench/X.py``
puts ``bench/`` first on ``sys.path``).
"""

from __future__ import annotations

import os
import resource
from pathlib import Path
from typing import Final

CLOCK_TICKS_PER_S: Final = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """user+sys seconds of *pid* so far (fields 14 and 15 of /proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def children_cpu_s() -> float:
    """user+sys seconds of this process's waited-for children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
