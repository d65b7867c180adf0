"""Atomic writes: a reader never sees a half-written artifact, and a killed stage leaves none."""

from __future__ import annotations

import fcntl
import json
import os
import re
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np


# `.<name>.<mkstemp's 8 random characters>.tmp<name's suffixes>`: the only names atomic_path creates.
_PARTIAL = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp(?P<suffixes>(?:\.[^.]+)*)$")


@contextmanager
def atomic_path(path: str | Path, exclusive: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.
    With `exclusive`, a `path` that exists by then wins (hard link, not rename): for files that
    others start using as soon as they appear, such as a database.

    The temporary file stays locked (flock) until the rename, so `remove_partials` can tell a live
    writer's file from one a killed writer left: the kernel drops the lock when a process dies.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + "".join(path.suffixes))
    tmp_path = Path(tmp)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield tmp_path
        if not exclusive:
            os.replace(tmp_path, path)
        else:
            try:
                os.link(tmp_path, path)
            except FileExistsError:
                pass
    finally:
        os.close(fd)
        tmp_path.unlink(missing_ok=True)


def is_partial(path: str | Path) -> bool:
    """Whether `path` is named like an atomic write's temporary file (and nothing else)."""
    match = _PARTIAL.match(Path(path).name)
    return bool(match) and "".join(Path(match["name"]).suffixes) == match["suffixes"]


def remove_partials(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Delete, under `folder`, the temporary files of atomic writes whose writer died (kill -9, OOM):
    only files named as `atomic_path` names them, and only when no live process holds their lock.
    Stages call it when they start, so a killed run leaves no debris after the rerun."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for path in sorted((folder.rglob if recursive else folder.glob)(".*.tmp*")):
        if path.is_symlink() or not path.is_file() or not is_partial(path):
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:  # renamed or cleaned up by its writer meanwhile
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a live writer holds it
            continue
        else:
            path.unlink(missing_ok=True)
            removed.append(path)
        finally:
            os.close(fd)
    return removed


def write_with(path: str | Path, writer: Callable[[Path], Any]) -> Path:
    """Run `writer(tmp_path)` and atomically move the result onto `path`."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return write_with(path, lambda p: p.write_text(text))


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def write_parquet(path: str | Path, table) -> Path:
    """Write a pyarrow Table (or pandas DataFrame) atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    return write_with(path, lambda p: pq.write_table(table, p))


def save_nifti(path: str | Path, array: np.ndarray, affine: np.ndarray) -> Path:
    """Save a volume with its RAS affine as NIfTI, atomically."""
    import nibabel as nib

    image = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64))
    return write_with(path, lambda p: nib.save(image, str(p)))


def load_nifti(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Load a NIfTI volume as (array, RAS affine)."""
    import nibabel as nib

    image = nib.load(str(path))
    return np.asarray(image.dataobj), np.asarray(image.affine)


def spacing_of(affine: np.ndarray) -> np.ndarray:
    """Voxel size (mm) along each array axis."""
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
