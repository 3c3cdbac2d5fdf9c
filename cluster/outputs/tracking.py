"""Experiment trackers: TensorBoard event files in the run dir (offline, the default) and, optionally, W&B.

Both receive the same scalars as stats.jsonl (train/*, time/*), the evaluation results (eval/*) and text
sample tables. wandb is imported only when run.wandb_project is set (the config refuses it if the
package is missing).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


class TensorBoardTracker:
    def __init__(self, log_dir: Path, first_step: int):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: a resumed run redoes the steps after its checkpoint's; TensorBoard drops their old points
        self._writer = SummaryWriter(str(log_dir), purge_step=first_step + 1 if first_step > 0 else None)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        for name, value in values.items():
            self._writer.add_scalar(name, value, step)

    def table(self, step: int, name: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
        body = "".join("| " + " | ".join(_cell(v) for v in row) + " |\n" for row in rows)
        self._writer.add_text(name, head + body, step)

    def close(self) -> None:
        self._writer.close()


class WandbTracker:
    def __init__(self, project: str, run_dir: Path, config: dict, resume: bool):
        import wandb

        self._wandb = wandb
        self._run = wandb.init(
            project=project,
            name=run_dir.name,
            dir=str(run_dir),
            config=config,
            id=_wandb_id(run_dir),
            resume="allow" if resume else None,
        )

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        self._run.log(dict(values), step=step)

    def table(self, step: int, name: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        self._run.log({name: self._wandb.Table(columns=list(columns), data=[list(r) for r in rows])}, step=step)

    def close(self) -> None:
        self._run.finish()


def _wandb_id(run_dir: Path) -> str:
    """One W&B run per run dir, so a resume continues the same run: the id is kept in the run dir."""
    path = run_dir / "wandb_run_id.txt"
    if not path.exists():
        import uuid

        path.write_text(uuid.uuid4().hex[:12])
    return path.read_text().strip()


def _cell(value: object) -> str:
    text = f"{value:+.3f}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


class Trackers:
    """Every configured tracker behind one call per kind of record."""

    def __init__(self, trackers: Sequence[TensorBoardTracker | WandbTracker]):
        self._trackers = list(trackers)

    @classmethod
    def open(cls, run_dir: Path, tensorboard: bool, wandb_project: str, config: dict, first_step: int) -> Trackers:
        trackers: list = []
        if tensorboard:
            trackers.append(TensorBoardTracker(run_dir / "tensorboard", first_step))
        if wandb_project:
            trackers.append(WandbTracker(wandb_project, run_dir, config, resume=first_step > 0))
        return cls(trackers)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        for t in self._trackers:
            t.scalars(step, values)

    def table(self, step: int, name: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        for t in self._trackers:
            t.table(step, name, columns, rows)

    def close(self) -> None:
        for t in self._trackers:
            t.close()
