"""Writing files and folders: atomic (temporary name, then rename), umask-honouring, never overwriting by surprise.

Every writer in the project goes through here: checkpoint conversion, ComfyUI files, training checkpoints and
exports, pipeline saves. Temporary names are recognisable (``.NAME.longclip-partial-PID``) so a run killed half-way
leaves something a person can identify, and the next write to the same place removes such leftovers of dead
processes.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

PARTIAL_MARKER = ".longclip-partial-"


class DestinationExistsError(FileExistsError):
    """The destination exists and the caller did not ask to overwrite it."""


def current_umask() -> int:
    """The process umask (read without changing it for longer than one call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _partial_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{PARTIAL_MARKER}{os.getpid()}")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(path: Path) -> list[Path]:
    """Remove our own temporaries for ``path`` left by processes that no longer run; returns what was removed."""
    removed = []
    if not path.parent.is_dir():
        return removed
    prefix = f".{path.name}{PARTIAL_MARKER}"
    for candidate in path.parent.iterdir():
        if not candidate.name.startswith(prefix):
            continue
        pid = candidate.name[len(prefix) :]
        if not pid.isdigit() or (int(pid) != os.getpid() and _process_alive(int(pid))):
            continue
        if candidate.is_dir() and not candidate.is_symlink():
            shutil.rmtree(candidate, ignore_errors=True)
        else:
            candidate.unlink(missing_ok=True)
        removed.append(candidate)
    return removed


def check_destination(path: str | os.PathLike, overwrite: bool = False, what: str = "destination") -> Path:
    """Refuse an existing ``path`` unless ``overwrite``; refuse a folder where a file goes and the reverse."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise DestinationExistsError(
            f"{what} {path} already exists; choose another path or pass overwrite=True (CLI: --overwrite)."
        )
    return path


def _apply_umask(path: Path, directory: bool) -> None:
    """Give ``path`` (and, for a folder, everything in it) the modes ``open``/``mkdir`` would: 0666/0777 less umask."""
    mask = current_umask()
    if not directory:
        os.chmod(path, 0o666 & ~mask)
        return
    os.chmod(path, 0o777 & ~mask)
    for root, folders, names in os.walk(path):
        for name in folders:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in names:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it gets the umask's mode and is renamed onto ``path``.

    On failure (or ``kill``) the destination is untouched; the temporary is removed here, or by the next write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path)
    temporary = _partial_path(path)
    try:
        yield temporary
        _apply_umask(temporary, directory=False)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder beside ``path``; on success it replaces ``path`` (a folder of ours) whole.

    Only ``path`` itself is replaced: the caller decides (``check_destination``) whether an existing one may go.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path)
    staging = _partial_path(path)
    staging.mkdir()
    try:
        yield staging
        _apply_umask(staging, directory=True)
        if path.is_dir() and not path.is_symlink():
            previous = path.with_name(f".{path.name}{PARTIAL_MARKER}{os.getpid()}-old")
            os.replace(path, previous)
            os.replace(staging, path)
            shutil.rmtree(previous, ignore_errors=True)
        else:
            if path.exists() or path.is_symlink():
                path.unlink()
            os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
