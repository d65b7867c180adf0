"""Quarantine tables name each rejected input file without naming its patient.

Folder and file names of a PACS export often carry names, MRNs or dates (`DOE^JOHN_MRN123456/
IM_0001_DOE.dcm`). With `ingest.pseudonymize_paths` (the default) every path component is written
as a salted pseudonym (the HMAC of `medsegllm.common.deid`, domain-separated from identifiers),
keeping a known file suffix: `p-3fa2c1d07b21/p-9b1e22aa01c4.dcm`. The mapping is stable for one
salt and needs the input tree to invert: `resolve_quarantine` walks that tree locally, and
`medsegllm quarantine-resolve` prints the real paths without writing them anywhere.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.parquet as pq

from medsegllm.common.deid import pseudonym
from medsegllm.common.schemas import QUARANTINE
from medsegllm.ingest.scan import iter_files

# Suffixes kept on a pseudonymized file name: they say what kind of file it was and name no one.
KNOWN_SUFFIXES = frozenset({".dcm", ".dicom", ".ima", ".img", ".json", ".jsonl", ".csv", ".txt", ".xml", ".gz",
                            ".zip", ".bin", ".raw", ".nii"})


def pseudonymize_path(relative: str, salt: str) -> str:
    """`a/b/c.dcm` -> `p-<12 hex>/p-<12 hex>/p-<12 hex>.dcm`, component by component."""
    parts = PurePosixPath(relative).parts
    out = []
    for i, part in enumerate(parts):
        # the name's bytes in hex: any file name (undecodable, padded with spaces) hashes as it is
        name = f"p-{pseudonym('path:' + os.fsencode(part).hex(), salt)[:12]}"
        suffix = PurePosixPath(part).suffix.lower()
        out.append(name + suffix if i == len(parts) - 1 and suffix in KNOWN_SUFFIXES else name)
    return "/".join(out)


def one_row_per_file(quarantine: list[tuple[Path, str]]) -> list[tuple[Path, str]]:
    """One (file, reason) per file, in first-seen order: a file rejected for several reasons (the
    volumes of one enhanced object) gets them all, joined by "; ", each once."""
    reasons: dict[Path, list[str]] = {}
    for path, reason in quarantine:
        listed = reasons.setdefault(path, [])
        if reason not in listed:
            listed.append(reason)
    return [(path, "; ".join(listed)) for path, listed in reasons.items()]


def quarantine_table(quarantine: list[tuple[Path, str]], input_dir: Path, salt: str, pseudonymize: bool) -> pa.Table:
    """The QUARANTINE table of (file, reason) pairs, sorted by the path it writes."""

    def name(path: Path) -> str:
        relative = Path(path).relative_to(input_dir).as_posix()
        return pseudonymize_path(relative, salt) if pseudonymize else relative

    rows = sorted(({"path": name(path), "reason": reason} for path, reason in quarantine), key=lambda r: r["path"])
    return pa.Table.from_pylist(rows, schema=QUARANTINE)


def resolve_quarantine(input_dir: Path, quarantine_path: Path, salt: str) -> list[dict]:
    """Each quarantine row plus `input_path`, the real path (relative to `input_dir`) of the file it
    names; None when no file under `input_dir` matches (another tree, or another salt). Rows written
    with `pseudonymize_paths: false` resolve to themselves."""
    input_dir = Path(input_dir)
    real: dict[str, str] = {}
    for path in iter_files(input_dir):
        relative = path.relative_to(input_dir).as_posix()
        real[pseudonymize_path(relative, salt)] = relative
        real.setdefault(relative, relative)
    return [{**row, "input_path": real.get(row["path"])} for row in pq.read_table(quarantine_path).to_pylist()]
