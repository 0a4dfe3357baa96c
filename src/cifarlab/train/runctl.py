"""Run control: one process per run directory (a lock), Ctrl-C that stops cleanly between batches,
and a NaN guard that stops a diverged run before it overwrites a good checkpoint.

Why not save mid-epoch on Ctrl-C: resuming exactly from the middle of an epoch needs the batch index,
every RNG state and the partial sums threaded through the training loop. Epochs are seeded from
(seed, epoch) instead, so stopping at a batch boundary, keeping the last epoch-end checkpoint and
redoing the partial epoch on --resume gives exactly the uninterrupted run's numbers, with one
mechanism for Ctrl-C and kill -9 alike.

The lock is RUN_DIR/.lock held with flock: the OS releases it when the process dies, even by kill -9,
so a stale lock file never blocks (it only names who held it last). The file says pid and host so
the refusal can name the other process.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from cifarlab.errors import UserError
from cifarlab.io import sweep_stale_parts
from cifarlab.rundir import RunDir

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are then unlocked (documented in the README)
    fcntl = None


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) honoured at a batch boundary; the message says what was kept and how to resume."""


class RunInUse(UserError):
    """Another live process holds the run directory's lock (a sweep worker waits for it instead of failing)."""


class RunLock:
    """Exclusive use of a run directory for this process (flock on RUN_DIR/.lock)."""

    def __init__(self, run_dir: Path):
        self.path = RunDir(run_dir).lock
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        if fcntl is None:
            return self
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read(fd)
                os.close(fd)
                raise RunInUse(f"{self.path.parent} is in use by another cifarlab process ({holder}); wait for "
                                "it to finish or stop it (its lock is released the moment it exits)") from None
            if _same_file(fd, self.path):  # not unlinked by a holder that exited meanwhile
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # while still locked: nobody can be holding this inode
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode(errors="replace").strip() or "pid unknown"
    except OSError:
        return "pid unknown"


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


# ---------------------------------------------------------------- Ctrl-C between batches

_stop: list[int] = []  # signal numbers received; signals reach the whole process, so one flag for it


class StopRequested(Exception):
    """Raised by check_stop at a batch boundary; fit turns it into Interrupted with the resume command."""

    def __init__(self, epoch: int, batch: int, n_batches: int, during: str = ""):
        super().__init__(f"epoch {epoch}, batch {batch}/{n_batches}")
        self.epoch, self.batch, self.n_batches, self.during = epoch, batch, n_batches, during


def check_stop(epoch: int, batch: int, n_batches: int, during: str = "") -> None:
    """Called between batches (of training, or of a long pass before it, named by `during`): stop here if
    Ctrl-C or SIGTERM arrived (nothing is half-done)."""
    if _stop:
        raise StopRequested(epoch, batch, n_batches, during)


def _on_signal(signum: int, frame) -> None:
    if _stop:  # asked twice: the user means now
        raise KeyboardInterrupt
    _stop.append(signum)


# ---------------------------------------------------------------- NaN guard

def check_finite(value: torch.Tensor | float, what: str, epoch: int, model: nn.Module | None = None) -> None:
    """Stop the run (one line, exit 2) before a diverged model can overwrite last.pt or best.pt.
    float(value) is one host sync: the loop calls this every NAN_CHECK_EVERY batches, not each."""
    if not math.isfinite(float(value)):
        _diverged(f"{what} became {float(value)}", epoch)
    if model is not None and not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        _diverged("the weights became nan or inf", epoch)


CHANCE_MARGIN = 0.05  # validation accuracy within this of chance counts as "at chance"
RISEN = 0.30  # ...but only after it had once reached this much (an untrained net starts at chance)
MIN_VAL = 1000  # below this many validation images, accuracy is too noisy to call "back at chance"
LOSS_BLOWUP = 1.5  # train loss this many times its start (first epoch's, or a uniform guess's if higher)


def check_progress(history: list[dict[str, float]], n_val: int, n_classes: int = 10) -> None:
    """Stop a run that has finite numbers but has diverged (one line, exit 2, before the epoch is saved):
    train loss far above its start, or validation accuracy back at chance after it had risen. Without
    batch norm, Adam at too high a rate does the latter and then trains on at 10 % for hours."""
    row, epoch = history[-1], int(history[-1]["epoch"])
    start = max(math.log(n_classes), history[0]["train_loss"])
    best = max(r["val_acc"] for r in history)
    why = ""
    if len(history) > 1 and row["train_loss"] > LOSS_BLOWUP * start:
        why = f"the training loss rose to {row['train_loss']:.3g}, {row['train_loss'] / start:.1f}x its start"
    elif n_val >= MIN_VAL and best >= RISEN and row["val_acc"] <= 1 / n_classes + CHANCE_MARGIN:
        why = f"validation accuracy fell back to chance ({row['val_acc']:.1%}) after reaching {best:.1%}"
    if why:
        kept = f"last.pt keeps epoch {epoch - 1}, best.pt the best one" if epoch > 1 else "nothing was saved"
        raise UserError(f"epoch {epoch}: the run diverged: {why}; likely cause: the learning rate is too high "
                        f"(try a lower lr); stopped before saving: {kept}")


def _diverged(what: str, epoch: int) -> None:
    kept = f"last.pt and best.pt keep epoch {epoch - 1}" if epoch > 1 else "no checkpoint had been written yet"
    raise UserError(f"epoch {epoch}: {what} (try a lower lr); stopped before saving: {kept}")


# ---------------------------------------------------------------- both, around one run

class RunControl:
    """Around fit(): signal handlers in, the run directory's lock taken by make_run_dir, both undone on
    exit; StopRequested becomes Interrupted saying what is kept and how to resume."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.lock: RunLock | None = None
        self.old_handlers: dict[int, Any] = {}

    def make_run_dir(self, run_dir: Path) -> None:
        try:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create run directory {run_dir} ({e.strerror or e})") from None
        self.lock = RunLock(run_dir).acquire()
        sweep_stale_parts(Path(run_dir), min_age=0)  # we hold the lock: no training process is writing here

    def __enter__(self) -> "RunControl":
        _stop.clear()
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            self.old_handlers = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for s, h in self.old_handlers.items():
            signal.signal(s, h)
        _stop.clear()
        if self.lock is not None:
            self.lock.release()
        if isinstance(exc, StopRequested):
            raise Interrupted(self.resume_message(exc)) from None

    def resume_message(self, stop: StopRequested) -> str:
        if stop.during:
            return (f"interrupted while {stop.during} ({stop.batch}/{stop.n_batches}): what had finished is kept. "
                    f"Continue with: cifarlab train --resume {self.run_dir}")
        kept = (f"last.pt holds epoch {stop.epoch - 1}; the {stop.batch} batches done of epoch {stop.epoch} are "
                "redone on resume, with the same result" if stop.epoch > 1 else "no epoch had finished, so nothing "
                "was saved but config.yaml")
        return (f"interrupted at epoch {stop.epoch}, batch {stop.batch}/{stop.n_batches}: {kept}. "
                f"Continue with: cifarlab train --resume {self.run_dir}")
