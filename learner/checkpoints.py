"""What a learner checkpoint holds, written and read back collectively; the directory's crash safety (partial
dir, manifest, rename) is checkpoint_dir.py.

A checkpoint: policy/ (a loadable model directory, or with LoRA the adapter), anchor/ (fp32: the EMA's full
precision), engine/ (optimizer state, by the engine), rng/rank<r>.pt, extra.json (the caller's, e.g. the data
cursor) and the manifest's metadata (step, versions, reference id and the layout restore requires).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from bond.records import Role
from learner import checkpoint_dir, rendezvous
from learner.engine import Engine
from learner.shadow_weights import ShadowWeights
from learner.weight_export import WeightExport


class Checkpoints:
    def __init__(
        self, export: WeightExport, engine: Engine, anchor: ShadowWeights, reference_id: str, rank: int
    ) -> None:
        self.export, self.engine, self.anchor, self.reference_id, self.rank = export, engine, anchor, reference_id, rank

    def save(self, directory: str | Path, meta: dict, extra: dict | None = None, sha256: bool = True) -> None:
        """`meta` (step, versions, layout) goes into the manifest; `extra` must be JSON-serialisable."""
        final = Path(directory)
        partial = checkpoint_dir.partial_path(final)
        extra_text = json.dumps(extra or {})  # fail before writing anything if extra is not JSON
        if self.rank == 0:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        rendezvous.barrier()
        self.export.write(Role.POLICY, self.export.dtype, partial / "policy")
        self.export.write(Role.ANCHOR, torch.float32, partial / "anchor")  # full precision of the EMA
        self.engine.save_state(partial / "engine")
        (partial / "rng").mkdir(exist_ok=True)
        torch.save(_rng_state(), partial / "rng" / f"rank{self.rank}.pt")
        rendezvous.barrier()
        if self.rank == 0:
            if self.export.lora is None:
                self.engine.module.config.save_pretrained(partial / "policy")  # policy/ is itself a model dir
            (partial / "extra.json").write_text(extra_text)
            checkpoint_dir.seal(partial, final, {**meta, "reference_id": self.reference_id}, sha256=sha256)
        rendezvous.barrier()

    def restore(self, directory: str | Path, layout: dict) -> tuple[dict, dict]:
        """Loads the optimizer state, the anchor and this rank's RNG; returns (meta, extra). Refuses partial or
        corrupt checkpoints, another reference model's, and another layout's (world size, ZeRO stage, dtype)."""
        path = checkpoint_dir.resolve(Path(directory))
        meta = checkpoint_dir.verify(path)
        if meta["reference_id"] != self.reference_id:
            raise checkpoint_dir.CheckpointError(
                f"checkpoint {path} has reference_id={meta['reference_id']!r} "
                f"but this learner has {self.reference_id!r}"
            )
        checkpoint_dir.check_layout(path, meta, layout)
        self.engine.load_state(path / "engine")
        for i, (_, full) in enumerate(self.export.read(path / "anchor")):
            self.anchor.load_full(i, full)
        _set_rng_state(torch.load(path / "rng" / f"rank{self.rank}.pt", weights_only=True))
        rendezvous.barrier()
        return meta, json.loads((path / "extra.json").read_text())


def _rng_state() -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
