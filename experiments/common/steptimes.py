"""When a run's steps ran: wall-clock stamps for its run manifest, from which ``experiments.runtime``
splits each job's wall time into compute (first step → last step) and fixed cost (the rest: interpreter
start, imports, model and data loading before; writing the outputs after).

A step is an optimiser step or a pass of sampling or evaluation over the data. A training CLI calls
:func:`first_step` where its first step starts (only the first call of a run counts), :func:`last_step`
where its last one ends (the last call counts), and passes :func:`record` to its manifest, beside the other
run facts that differ between runs (``summary["manifest"]["steps_wall"]``; the summary's results stay
byte-reproducible)::

    steptimes.first_step()            # before the loop
    for step in ...: ...
    steptimes.last_step()             # after the loop (and after the evaluation that follows it)
    summary["manifest"] = run_manifest(..., steps_wall=steptimes.record())

A transformers ``Trainer`` gets :func:`trainer_callback` in its callbacks instead of the two calls. The
stamps are process-wide (one run at a time per process); :func:`record` starts the next run afresh (a CLI
that trains several seeds in one process records one span per seed, and the gaps between them, such as
reloading the model, count as fixed cost).
"""

from __future__ import annotations

import os
import time

_first: float | None = None
_last: float | None = None


def process_start() -> float | None:
    """This process's start (epoch seconds), or None where it cannot be read."""
    try:
        import psutil

        return float(psutil.Process().create_time())
    except Exception:  # psutil missing or refused: try /proc, else no stamp
        pass
    try:
        with open(f"/proc/{os.getpid()}/stat", encoding="ascii") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime, clock ticks after boot
        with open("/proc/stat", encoding="ascii") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def first_step(t: float | None = None) -> None:
    """The first step starts now (or at ``t``); later calls before :func:`record` change nothing."""
    global _first
    if _first is None:
        _first = time.time() if t is None else t


def last_step(t: float | None = None) -> None:
    """A step ended now (or at ``t``): the last call before :func:`record` counts."""
    global _last
    _last = time.time() if t is None else t


def record() -> dict | None:
    """``{"process_start", "first_step_start", "last_step_end"}`` (epoch seconds) of the run so far, or
    None if no step ran; resets the stamps for the next run in this process. (A run that raises before
    recording leaves its stamps to the next one in the same process: only tests run several.)"""
    global _first, _last
    if _first is None or _last is None:
        out = None
    else:
        out = {"process_start": process_start(), "first_step_start": round(_first, 3),
               "last_step_end": round(max(_last, _first), 3)}
    _first = _last = None
    return out


def trainer_callback():
    """A transformers ``TrainerCallback`` that stamps the start of the first optimiser step and the end of
    each one (so the last counts)."""
    from transformers import TrainerCallback

    class StepTimes(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            first_step()

        def on_step_end(self, args, state, control, **kwargs):
            last_step()

    return StepTimes()
