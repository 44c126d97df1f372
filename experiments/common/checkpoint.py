"""Resumable training. A training step saves checkpoints in a folder OUTSIDE its declared outputs
(``checkpoints/<scale>/<rule>/<wildcards>/`` in the DAG), because Snakemake deletes the outputs of a job
it reruns; a killed job rerun by Snakemake (``--retries``, ``--rerun-incomplete`` or a plain rerun)
finds the last checkpoint there and continues from it, and the folder is removed once the outputs are
written.

For ``transformers.Trainer``-based steps (TRL's ``SFTTrainer``/``DPOTrainer``, ``Seq2SeqTrainer``) a
checkpoint is the trainer's own: weights, optimizer, scheduler, RNG states and the data position, so a
resumed run takes the same remaining steps as an uninterrupted one.

Fault injection for the resume tests: with ``SUITE_TEST_KILL_AFTER_SAVE=N`` in the environment the
process SIGKILLs itself right after it has saved the checkpoint of step N (a real kill, at a point the
test can name; never set in normal use).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import signal
from pathlib import Path

log = logging.getLogger("checkpoint")

KILL_ENV = "SUITE_TEST_KILL_AFTER_SAVE"


def auto_save_steps(max_steps: int, parts: int = 4) -> int:
    """Save about ``parts`` times per run (at least every step)."""
    return max(1, math.ceil(max_steps / parts))


def last_checkpoint(folder: str | os.PathLike | None) -> str | None:
    """The newest ``checkpoint-<step>`` of a trainer folder, or None (no folder, or nothing saved yet)."""
    if folder is None or not Path(folder).is_dir():
        return None
    from transformers.trainer_utils import get_last_checkpoint

    found = get_last_checkpoint(str(folder))
    if found:
        log.info("resuming from %s", found)
    return found


def trainer_args(folder: str | os.PathLike, save_steps: int) -> dict:
    """``TrainingArguments`` keywords that save a resumable checkpoint every ``save_steps`` steps into
    ``folder`` (only the newest kept)."""
    return {"output_dir": str(folder), "save_strategy": "steps", "save_steps": int(save_steps),
            "save_total_limit": 1, "save_only_model": False}


def kill_after_save_callback():
    """A ``TrainerCallback`` that SIGKILLs the process after the checkpoint of step ``$SUITE_TEST_KILL_AFTER_SAVE``
    (None when the variable is unset)."""
    step = os.environ.get(KILL_ENV)
    if not step:
        return None
    from transformers import TrainerCallback

    class KillAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == int(step):
                log.warning("%s=%s: killing this process after saving step %s", KILL_ENV, step, step)
                os.kill(os.getpid(), signal.SIGKILL)

    return KillAfterSave()


def finished(folder: str | os.PathLike | None) -> None:
    """Remove the checkpoints once the step's outputs are written."""
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


class LoopCheckpoint:
    """Resumable state of a hand-written training loop: one ``state.pt`` (tensors, numbers, strings, lists
    and dicts only, so it loads with ``torch.load(weights_only=True)``) rewritten atomically every
    ``every`` steps. ``save(step, state)`` stores it (and obeys ``$SUITE_TEST_KILL_AFTER_SAVE``);
    ``load()`` returns the last state or None."""

    def __init__(self, folder: str | os.PathLike | None, every: int):
        self.folder = Path(folder) if folder else None
        self.every = max(1, int(every))

    @property
    def path(self) -> Path | None:
        return self.folder / "state.pt" if self.folder else None

    def due(self, step: int) -> bool:
        return self.folder is not None and step > 0 and step % self.every == 0

    def save(self, step: int, state: dict) -> None:
        import torch

        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / ".state.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.path)
        log.info("checkpoint at step %d -> %s", step, self.path)
        kill = os.environ.get(KILL_ENV)
        if kill and int(kill) == step:
            log.warning("%s=%s: killing this process after saving step %s", KILL_ENV, kill, step)
            os.kill(os.getpid(), signal.SIGKILL)

    def load(self) -> dict | None:
        if self.path is None or not self.path.is_file():
            return None
        import torch

        log.info("resuming from %s", self.path)
        return torch.load(self.path, weights_only=True)


def rng_state() -> dict:
    """The global torch RNG states (CPU, and every CUDA device when there is one): what dropout and other
    unseeded draws consume, so that a resumed loop draws what the uninterrupted one would have."""
    import torch

    out = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict) -> None:
    import torch

    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class SeedCache:
    """Finished seeds of a multi-seed job (``--seed 0 1 2`` in one process). Each seed's run folder is a
    declared output, which Snakemake deletes when it reruns a killed job; so once a seed's files are
    written they are also copied here, and a rerun restores them instead of training that seed again.
    ``$SUITE_TEST_KILL_AFTER_SAVE=seed~N`` SIGKILLs the process right after seed N is stored."""

    def __init__(self, folder: str | os.PathLike | None):
        self.folder = Path(folder) if folder else None

    def _dir(self, seed: int) -> Path:
        return self.folder / f"seed~{seed}"

    def done(self, seed: int) -> bool:
        return self.folder is not None and (self._dir(seed) / ".complete").is_file()

    def store(self, seed: int, out_dir: str | os.PathLike) -> None:
        if self.folder is None:
            return
        dest = self._dir(seed)
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(out_dir, dest, ignore=shutil.ignore_patterns(".trainer.*"))
        (dest / ".complete").write_text("")
        label = f"seed~{seed}"
        if os.environ.get(KILL_ENV) == label:
            log.warning("%s=%s: killing this process after storing %s", KILL_ENV, label, label)
            os.kill(os.getpid(), signal.SIGKILL)

    def restore(self, seed: int, out_dir: str | os.PathLike) -> dict | None:
        """If ``seed`` finished before the job was interrupted: copy its files back into ``out_dir`` and
        return its ``summary.json``; else None (train it)."""
        if not self.done(seed):
            return None
        log.info("seed %d finished before the job was interrupted: restoring it from %s", seed, self._dir(seed))
        shutil.copytree(self._dir(seed), out_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".complete"))
        from experiments.common.io import read_json

        return read_json(Path(out_dir) / "summary.json")
