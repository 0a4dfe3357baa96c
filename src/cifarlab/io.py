"""Atomic file writes: write beside the target, fsync, rename. A crash leaves the old file or none."""

from __future__ import annotations

import csv
import glob
import hashlib
import http.client
import io
import json
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, IO

from cifarlab.errors import UserError


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Readers (and a crash, kill -9 or power cut at any moment) see the old file or the new one, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


STALE_PART_AGE = 3600.0  # seconds; a writer on another machine sharing the folder has a PID meaningless here
_PART = re.compile(r"\..+\.(?P<pid>\d+)\.part")  # .NAME.PID.part, as atomic_write and download name them


def sweep_stale_parts(folder: Path, min_age: float = STALE_PART_AGE) -> list[Path]:
    """Remove the half-written `.NAME.PID.part` files (or folders, atomic_write_folder's) in folder of
    writers that died (kill -9, power cut): only one whose PID is no live process here and that was last
    written min_age seconds ago or earlier, never a live writer's. Best effort (a read-only folder, a race
    with another sweeper): returns what it removed."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for e in entries:
        m = _PART.fullmatch(e.name)
        if m is None or _pid_alive(int(m["pid"])):
            continue
        try:
            if now - e.stat(follow_symlinks=False).st_mtime < min_age:
                continue
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path)
            else:
                os.unlink(e.path)
        except OSError:
            continue
        removed.append(Path(e.path))
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # on Windows os.kill would terminate the process: assume alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OverflowError:  # no process can have this PID
        return False
    except OSError:  # PermissionError: alive, owned by another user
        return True
    return True


def _fsync_dir(folder: Path) -> None:
    # makes the rename itself durable; not possible on every OS or file system, and only a nicety there
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_folder(path: Path, files: dict[str, bytes]) -> None:
    """path/ holds exactly `files`, or stays as it was: they are written into a hidden sibling folder
    (.NAME.PID.part), fsynced, and the folder renamed into place; an old path/ is moved aside first and
    removed after. A crash leaves the old folder or the new one beside a hidden leftover, or (killed between
    the two renames) the old one as `.NAME.PID.old`, which the next write to path puts back first."""
    path = Path(path)
    _restore_stale_old(path)
    sweep_stale_parts(path.parent)  # an earlier writer's half-made folder
    tmp, old = (path.with_name(f".{path.name}.{os.getpid()}.{s}") for s in ("part", "old"))
    shutil.rmtree(tmp, ignore_errors=True)  # an earlier process's with our PID (containers reuse them)
    try:
        tmp.mkdir()
        for name, data in files.items():
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        _fsync_dir(tmp)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not path.exists():
            os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(path.parent)


def _restore_stale_old(path: Path) -> None:
    """A writer killed between its two renames left path/ only as `.NAME.PID.old`: put the newest such
    folder of a dead writer (or of an earlier process with our PID, as containers reuse them) back; the
    rest, and any beside a present path/, are removed. Their mtimes are the old export's, not the crash's,
    so no age rule here."""
    def dead(old: Path) -> bool:
        pid = old.name[len(path.name) + 2:-len(".old")]
        return pid.isdigit() and (int(pid) == os.getpid() or not _pid_alive(int(pid)))

    try:
        olds = sorted((o for o in path.parent.glob(f".{glob.escape(path.name)}.*.old") if dead(o)),
                      key=lambda o: o.stat().st_mtime)
        if olds and not path.exists():
            os.replace(olds.pop(), path)
        for old in olds:
            shutil.rmtree(old)
    except OSError:
        pass


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def write_csv(path: Path, rows: list[dict[str, Any]], fields: list[str] | None = None) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields or (list(rows[0]) if rows else []), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def save_checkpoint(path: Path, obj: dict[str, Any]) -> None:
    import torch  # late: config and data code use this module without needing torch

    atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load with weights_only=True: a checkpoint holds tensors and plain data, never code. A file
    naming any other global (os.system, a class, ...) fails with one line before anything runs."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: checkpoint not found") from None
    except Exception as e:  # torch raises many types for corrupt or hostile files
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: cannot load checkpoint ({reason})") from None


def download(url: str, dest: Path, what: str, hint: str, md5: str | None = None, size: int | None = None,
             progress: bool = True) -> Path:
    """Stream url to dest via a .part file, checking size/MD5 when known; a failure leaves no file and
    raises one UserError line that ends with `hint` (how to proceed offline)."""
    dest = Path(dest)
    part = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_parts(dest.parent)  # an earlier download killed midway
        if progress:
            print(f"downloading {what} from {url} to {dest}", file=sys.stderr)
        digest, n = hashlib.md5(), 0
        with urllib.request.urlopen(url, timeout=60) as r, open(part, "wb") as f:
            while chunk := r.read(1 << 20):
                digest.update(chunk)
                n += len(chunk)
                f.write(chunk)
        if (md5 and digest.hexdigest() != md5) or (size and n != size):
            raise UserError(f"{url}: downloaded {n} bytes with MD5 {digest.hexdigest()}, expected "
                            f"{size or '?'} bytes with MD5 {md5 or '?'} (md5 check failed: corrupt or truncated "
                            f"download); {hint}")
        os.replace(part, dest)
    except (OSError, http.client.HTTPException) as e:  # URLError and timeouts are OSErrors
        part.unlink(missing_ok=True)
        reason = e if isinstance(e, urllib.error.HTTPError) else (
            getattr(e, "reason", None) or getattr(e, "strerror", None) or e)
        raise UserError(f"cannot download {what} from {url} ({reason}); {hint}") from None
    except BaseException:  # the checksum error, Ctrl-C: never leave a .part behind
        part.unlink(missing_ok=True)
        raise
    return dest
