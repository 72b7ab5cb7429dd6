"""How many CPU threads training uses: the cores that other processes leave free.

A CPU step is a chain of parallel regions, and each ends when its slowest thread does. A thread on
a core that another process keeps busy gets only slices of it, and the others spin waiting for it
(OpenMP's default wait policy), so on a shared machine more threads than free cores is many times
slower than fewer (`bench/train_speed.py --shared-cpu` measures it). Training therefore takes
`--threads` when given, else $OMP_NUM_THREADS when set (torch has read it already), else the
cores of this process's affinity that other processes leave free: a short look at /proc/stat
before the first step, and again at every read of the loop, since other jobs come and go. A core
counts as free when others use under a quarter of it: a thread too many costs far more than one
too few.
"""

import os
import time

import torch


class Threads:
    """torch's intra-op thread count for a training run (see the module docstring)."""

    def __init__(self, setting, device, speak, look=0.2):
        self.cores = allowed_cores()
        self.fixed = setting is not None or bool(os.environ.get("OMP_NUM_THREADS"))
        if setting is not None:
            torch.set_num_threads(setting)
        self.count = torch.get_num_threads()
        if self.fixed:
            return
        self.look(look)
        if self.count < len(self.cores) and torch.device(device).type == "cpu":
            speak(
                f"other processes keep {len(self.cores) - self.count} of this process's "
                f"{len(self.cores)} cores busy: training with {self.count} "
                f"thread{'s' * (self.count > 1)} and following the load (--threads N to fix it)"
            )

    def look(self, seconds):
        """Watch the load for `seconds` from now, then set the threads from it; returns them."""
        if self.fixed:
            return self.count
        self.mark = _snapshot(self.cores)
        time.sleep(seconds)
        return self.update()

    def update(self):
        """Set the threads from what other processes used since the last look; returns them."""
        if self.fixed:
            return self.count
        now = _snapshot(self.cores)
        others = busy_elsewhere(self.mark, now)
        self.mark = now
        count = max(1, min(len(self.cores), int(len(self.cores) - others + 0.25)))
        if count != self.count:
            torch.set_num_threads(count)
            self.count = count
        return count


def allowed_cores():
    """The CPUs this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def busy_elsewhere(before, after):
    """Cores' worth of CPU that other processes used between two snapshots (0 when unknown)."""
    (wall0, busy0, mine0), (wall1, busy1, mine1) = before, after
    if busy0 is None or busy1 is None or wall1 <= wall0:
        return 0.0
    return max(0.0, ((busy1 - busy0) / _TICKS - (mine1 - mine0)) / (wall1 - wall0))


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _snapshot(cores):
    """(wall seconds, busy ticks of `cores` from /proc/stat or None, this process's CPU seconds)."""
    return time.monotonic(), _busy_ticks(cores), time.process_time()


def _busy_ticks(cores):
    try:
        with open("/proc/stat") as f:
            lines = f.readlines()
    except OSError:
        return None
    wanted, busy = {f"cpu{c}" for c in cores}, 0
    for line in lines:
        name, *values = line.split()
        if name in wanted:
            ticks = [int(v) for v in values[:8]]
            busy += sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait
    return busy
