"""A run's checkpoints and exports on disk: where they go, when they are due, which are kept, which to resume.

    run_dir/checkpoints/step_0000040/   sealed by learner/checkpoint_dir.py (manifest written last)
    run_dir/exports/step_0000040/       Hugging Face model directories (run.export_every)

A checkpoint is *valid* when its manifest is there and every file it lists has its recorded size (the
sha256 digests are checked when it is restored). Retention keeps the newest `run.keep_checkpoints` and
never deletes the newest valid one, so a corrupt latest save cannot leave a run with nothing to resume.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from learner import checkpoint_dir
from learner.checkpoint_dir import CheckpointError

_STEP_DIR = re.compile(r"step_(\d+)")


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step_{step:07d}"


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return step_dir(Path(run_dir) / "checkpoints", step)


def export_path(run_dir: Path, step: int) -> Path:
    return step_dir(Path(run_dir) / "exports", step)


def due(step: int, every: int) -> bool:
    """True on the steps a cadence of `every` (0: never) falls on."""
    return every > 0 and step % every == 0


def checkpoint_due(step: int, every: int, last_step: int) -> bool:
    """Checkpoints follow run.checkpoint_every and always include the last step."""
    return due(step, every) or step == last_step


def sealed(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, directory) of every checkpoint directory in step order; .partial / .previous leftovers excluded."""
    root = Path(run_dir) / "checkpoints"
    found = [(int(m.group(1)), p) for p in root.glob("step_*") if p.is_dir() and (m := _STEP_DIR.fullmatch(p.name))]
    return sorted(found)


def is_valid(path: Path) -> bool:
    try:
        checkpoint_dir.verify(path, hashes=False)
    except CheckpointError:
        return False
    return True


def newest_valid(run_dir: Path) -> tuple[Path | None, list[Path]]:
    """The newest valid checkpoint (None if there is none) and the newer, invalid ones passed over."""
    skipped = []
    for _, path in reversed(sealed(run_dir)):
        if is_valid(path):
            return path, skipped
        skipped.append(path)
    return None, skipped


def prune(run_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` checkpoints (0: keep all), never the newest valid one; returns what went."""
    if keep <= 0:
        return []
    found = sealed(run_dir)
    newest, _ = newest_valid(run_dir)
    kept = {p for _, p in found[-keep:]} | ({newest} if newest else set())
    removed = [p for _, p in found if p not in kept]
    for p in removed:
        shutil.rmtree(p)
    return removed


def check_layout(path: Path, learner_ranks: int, zero_stage: int, dtype: str, lora: str | None = None) -> None:
    """Refuse (before any process starts) to resume into a layout the checkpoint's optimizer state cannot load."""
    meta = checkpoint_dir.verify(path, hashes=False)
    checkpoint_dir.check_layout(
        path, meta, {"world_size": learner_ranks, "zero_stage": zero_stage, "dtype": dtype, "lora": lora}
    )
