"""How many CPU threads training uses: the cores that other processes leave free.

A CPU step is a chain of parallel regions, and each ends when its slowest thread does: a thread
on a core that another process keeps busy gets a slice of it and holds every region up, so on a
shared machine more threads than free cores is slower than fewer (bench/RESULTS.md, "Threads on a
shared CPU"). Training therefore takes `--threads` when given, else $OMP_NUM_THREADS when set
(torch has read it already), else the cores of this process's affinity that are idle over a
short look at /proc/stat, at least one.
"""
import os
import time

import torch


def use_threads(threads, device, speak):
    """Set torch's intra-op threads for training (see the module docstring); returns the count."""
    if threads is None and os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    cores = allowed_cores()
    if threads is None:
        threads = max(1, min(len(cores), round(idle_cores(cores))))
        if threads < len(cores) and device.type == "cpu":
            speak(f"other processes keep {len(cores) - threads} of this process's {len(cores)} "
                  f"cores busy: training with {threads} thread{'s' * (threads > 1)} "
                  f"(--threads N to choose)")
    torch.set_num_threads(threads)
    return threads


def allowed_cores():
    """The CPUs this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def idle_cores(cores, seconds=0.2):
    """How many of `cores` were idle over `seconds` (a fraction of each, summed); all of them
    where /proc/stat cannot be read."""
    first = _cpu_times()
    time.sleep(seconds)
    second = _cpu_times()
    if not first or not second:
        return float(len(cores))
    idle = 0.0
    for cpu in cores:
        if cpu not in first or cpu not in second:
            idle += 1.0
            continue
        (idle0, total0), (idle1, total1) = first[cpu], second[cpu]
        idle += (idle1 - idle0) / (total1 - total0) if total1 > total0 else 1.0
    return idle


def _cpu_times():
    """{cpu: (idle ticks, total ticks)} from /proc/stat, or {} where there is none."""
    try:
        with open("/proc/stat") as f:
            lines = f.readlines()
    except OSError:
        return {}
    times = {}
    for line in lines:
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            ticks = [int(v) for v in values[:8]]
            times[int(name[3:])] = (ticks[3] + ticks[4], sum(ticks))  # idle + iowait
    return times
