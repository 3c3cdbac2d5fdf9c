"""Crash-safe checkpoint directories: write into `<dir>.partial`, fsync, seal with a manifest, rename into place.

The manifest (manifest.json, written last) lists every file with its size and, unless hashing was turned off
for a large model, its sha256. A directory without one, or whose files do not match it, is refused with a
message naming the problem; so is one saved with another learner layout (world size, ZeRO stage, dtype).
Replacing an existing checkpoint renames it to `<dir>.previous` first; if a crash leaves only `<dir>.previous`,
`resolve` falls back to it, so some complete checkpoint is always usable.
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
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def seal(partial: Path, final: Path, meta: dict, sha256: bool = True) -> None:
    """Fsync (and hash, if `sha256`) every file of `partial`, write the manifest, and atomically move it to
    `final`. Without sha256 the manifest's digests are null and only sizes are checked on restore."""
    files = sorted(p for p in partial.rglob("*") if p.is_file())
    digests, sizes = {}, {}
    for p in files:
        _fsync(p)
        rel = p.relative_to(partial).as_posix()
        digests[rel] = _sha256(p) if sha256 else None
        sizes[rel] = p.stat().st_size
    manifest = partial / MANIFEST
    manifest.write_text(
        json.dumps({"format": FORMAT, **meta, "files": digests, "sizes": sizes}, indent=1, sort_keys=True)
    )
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


def verify(path: Path, hashes: bool = True) -> dict:
    """The manifest of a complete, uncorrupted checkpoint; CheckpointError otherwise.

    hashes=False checks only that every listed file is there with its recorded size (cheap: for choosing
    which checkpoint to resume from or keep); restoring checks the sha256 digests the manifest holds.
    """
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise CheckpointError(
            f"{path} has no {MANIFEST}: the checkpoint is partial (a save did not finish); restore an earlier one"
        )
    try:
        meta = json.loads(manifest.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{manifest} is not valid JSON ({e}): the checkpoint is corrupt") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{manifest}: format {meta.get('format')!r}, this learner reads format {FORMAT}")
    sizes = meta.get("sizes", {})
    for rel, digest in meta["files"].items():
        p = path / rel
        if not p.is_file():
            raise CheckpointError(f"checkpoint {path} is missing {rel} (listed in its manifest)")
        if rel in sizes and p.stat().st_size != sizes[rel]:
            raise CheckpointError(
                f"checkpoint {path}: {rel} has {p.stat().st_size} bytes, its manifest says "
                f"{sizes[rel]} (corrupt or truncated)"
            )
        if hashes and digest is not None and _sha256(p) != digest:
            raise CheckpointError(f"checkpoint {path}: {rel} does not match its sha256 in the manifest (corrupt)")
    return meta


LAYOUT_KEYS = ("world_size", "zero_stage", "dtype", "lora")  # lora: LoraConfig.layout, None = full weights


def check_layout(path: Path, meta: dict, requested: dict) -> None:
    """Refuse to restore a checkpoint into another layout (world size, ZeRO stage, dtype).

    The optimizer state is saved per rank in the engine's own partitioning, so it cannot be loaded into a
    different world size or ZeRO stage; DeepSpeed's universal-checkpoint conversion is not wired in.
    """
    saved = {k: meta.get(k) for k in LAYOUT_KEYS}
    wanted = {k: requested.get(k) for k in LAYOUT_KEYS}
    if saved != wanted:

        def show(layout: dict) -> str:
            return ", ".join(f"{k}={layout[k]}" for k in LAYOUT_KEYS)

        raise CheckpointError(
            f"checkpoint {path} was saved with {show(saved)}; this job asks for {show(wanted)}. Resuming with a "
            "different layout is not supported (each rank's optimizer state is partitioned for the saved one): "
            "resume with resources.learner_ranks / learner.zero_stage / learner.dtype / learner.lora as saved, or "
            f"start a new run from its policy weights (an HF directory: models.policy={path / 'policy'} if its "
            "tokenizer is beside it, or an export under run_dir/exports/)"
        )
