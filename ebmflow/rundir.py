"""A run directory is owned by one process at a time and nothing in it is overwritten or left half
written: an exclusive lock that dies with its process, files written atomically (a temporary file in
the same directory, fsync, rename), and names that never replace an earlier command's file."""

from __future__ import annotations

import fcntl
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, ClassVar

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import Tensor
from torchvision.utils import save_image

__all__ = [
    "AtomicCheckpointIO",
    "RunDirectoryBusy",
    "RunLock",
    "atomic_save_image",
    "atomic_write",
    "refuse_existing",
    "unused_name",
]

LOCK_NAME = ".ebmflow.lock"
TEMP_MARK = ".partial-"  # temporary files carry it: ".<name>.partial-<random>"


class RunDirectoryBusy(RuntimeError):
    """Another process holds the run directory."""


class RunLock:
    """An exclusive ``flock`` on ``<folder>/.ebmflow.lock``. The kernel drops it when the process ends,
    however it ends (``kill -9`` included), so a stale lock never blocks the next run. The file names the
    holder (pid, command, start time) for the message another process shows.

    Locks are re-entrant within a process: commands run one after another in one Python process (the
    tests, a notebook) share the lock their process already holds.
    """

    _held: ClassVar[dict[Path, RunLock]] = {}

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).resolve()
        self._handle: IO[str] | None = None

    @classmethod
    def acquire(cls, folder: str | Path) -> RunLock:
        """Lock ``folder`` (created if missing); raises RunDirectoryBusy naming the holder."""
        lock = cls(folder)
        if lock.folder in cls._held:
            return cls._held[lock.folder]
        lock.folder.mkdir(parents=True, exist_ok=True)
        handle = open(lock.folder / LOCK_NAME, "a+")  # noqa: SIM115 (held open while the lock is held)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunDirectoryBusy(
                f"run directory {lock.folder} is in use by {holder}. Wait for it to finish, or give this "
                "run its own directory (--trainer.default_root_dir)."
            ) from None
        handle.seek(0)
        handle.truncate()
        command = shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
        handle.write(f"pid {os.getpid()} ({command}, since {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        handle.flush()
        lock._handle = handle
        cls._held[lock.folder] = lock
        remove_partial_files(lock.folder)
        return lock

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing drops the flock
            self._handle = None
            RunLock._held.pop(self.folder, None)


# Where ebmflow writes inside a run directory (patterns): the run directory, its checkpoints and sample
# grids, and checkpoints where Lightning puts them for a W&B logger (<project>/<run id>/checkpoints).
PARTIAL_FILE_FOLDERS = (".", "checkpoints", "samples", "*/*/checkpoints")


def remove_partial_files(folder: Path) -> None:
    """Delete temporary files that a killed process left where ebmflow writes in the run directory
    (only the lock's holder calls this, so no other process is writing them), but none in another run
    directory below it (one with a lock file of its own: a run may be saving there now)."""
    for sub in PARTIAL_FILE_FOLDERS:
        for path in folder.glob(f"{sub}/.*{TEMP_MARK}*"):
            if not _in_a_nested_run(path.parent, folder):
                path.unlink(missing_ok=True)


def _in_a_nested_run(directory: Path, folder: Path) -> bool:
    while directory != folder:
        if (directory / LOCK_NAME).exists():
            return True
        directory = directory.parent
    return False


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` through ``write(handle)`` into a temporary file beside it, fsync, and rename it
    over ``path``: a reader (or a crash) sees the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}{TEMP_MARK}", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself survives a power cut
    finally:
        os.close(folder)


def atomic_save_image(images: Tensor, path: str | Path, **kwargs: Any) -> None:
    """torchvision's ``save_image`` (a PNG grid; ``kwargs`` as ``make_grid``'s), written atomically."""
    atomic_write(path, lambda handle: save_image(images, handle, format="png", **kwargs))


def refuse_existing(paths: list[Path], option: str) -> None:
    """A FileExistsError naming the first of ``paths`` that exists: an output ``option`` names is written
    once, never replaced (checked before the command's work, so nothing is written either)."""
    for path in paths:
        if path.exists():
            raise FileExistsError(
                f"{option} {path.parent} already holds {path.name} from an earlier command: give another "
                f"{option} or move it away (nothing was written)"
            )


def unused_name(folder: str | Path, stem: str, suffix: str) -> Path:
    """``folder/stem+suffix``, or ``stem-2+suffix``, ``stem-3+suffix``… : the first that does not exist."""
    folder = Path(folder)
    path, n = folder / f"{stem}{suffix}", 1
    while path.exists():
        n += 1
        path = folder / f"{stem}-{n}{suffix}"
    return path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint writer, but atomic in the checkpoint's own directory: a kill during
    a save leaves the previous ``last.ckpt`` whole (Lightning's writer stages the file in TMPDIR and
    copies it over the old one when TMPDIR is another filesystem)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        atomic_write(path, lambda handle: torch.save(checkpoint, handle))
