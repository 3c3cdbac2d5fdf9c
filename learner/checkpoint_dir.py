"""Crash-safe checkpoint directories: write into `<dir>.partial`, fsync, seal with a manifest, rename into place.

The manifest (manifest.json, written last) lists the sha256 of every file. A directory without one, or
whose files do not match it, is refused with a message naming the problem. Replacing an existing
checkpoint renames it to `<dir>.previous` first; if a crash leaves only `<dir>.previous`, `resolve`
falls back to it, so some complete checkpoint is always usable.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

MANIFEST = "manifest.json"
FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, partial or corrupt."""


def partial_path(final: Path) -> Path:
    return final.with_name(final.name + ".partial")


def previous_path(final: Path) -> Path:
    return final.with_name(final.name + ".previous")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def seal(partial: Path, final: Path, meta: dict) -> None:
    """Hash and fsync every file of `partial`, write the manifest, and atomically move it to `final`."""
    files = sorted(p for p in partial.rglob("*") if p.is_file())
    digests = {}
    for p in files:
        _fsync(p)
        digests[p.relative_to(partial).as_posix()] = _sha256(p)
    manifest = partial / MANIFEST
    manifest.write_text(json.dumps({"format": FORMAT, **meta, "files": digests}, indent=1, sort_keys=True))
    _fsync(manifest)
    for d in sorted({p.parent for p in files} | {partial}, key=lambda d: -len(d.parts)):
        _fsync(d)
    previous = previous_path(final)
    if final.exists():
        shutil.rmtree(previous, ignore_errors=True)
        os.rename(final, previous)
    os.rename(partial, final)
    _fsync(final.parent)
    shutil.rmtree(previous, ignore_errors=True)


def resolve(final: Path) -> Path:
    """The directory to restore from: `final`, or `final.previous` left by a crash mid-replace."""
    if final.is_dir():
        return final
    if previous_path(final).is_dir():
        return previous_path(final)
    hint = f" ({partial_path(final)} exists: a save did not finish)" if partial_path(final).exists() else ""
    raise CheckpointError(f"no checkpoint at {final}{hint}")


def verify(path: Path) -> dict:
    """The manifest of a complete, uncorrupted checkpoint; CheckpointError otherwise."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise CheckpointError(f"{path} has no {MANIFEST}: the checkpoint is partial (a save did not finish); "
                              "restore an earlier one")
    try:
        meta = json.loads(manifest.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{manifest} is not valid JSON ({e}): the checkpoint is corrupt") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{manifest}: format {meta.get('format')!r}, this learner reads format {FORMAT}")
    for rel, digest in meta["files"].items():
        p = path / rel
        if not p.is_file():
            raise CheckpointError(f"checkpoint {path} is missing {rel} (listed in its manifest)")
        if _sha256(p) != digest:
            raise CheckpointError(f"checkpoint {path}: {rel} does not match its sha256 in the manifest (corrupt)")
    return meta
