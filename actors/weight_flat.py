"""One bucket of a weight push as ONE flat byte buffer plus a header: the wire format of both transports.

The collective push broadcasts the buffer (actors/weight_broadcast.py). The object-store push puts a
FlatUpdate: its buffer is a numpy array, which Ray stores out of band and hands every reader as a zero-copy
view of the shared object-store memory (torch tensors inside a pickled dict are instead serialised one by one,
far below memcpy speed; docs/actors.md). The receiver's tensors are views of that buffer: no copy, no
safetensors; they are read-only (the engine's loaders and the EMA copy out of them, nothing writes in).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from bond.records import Role, WeightUpdate

ALIGN = 16  # byte offset of every tensor in a bucket: any dtype can be viewed in place
DTYPES = {str(d): d for d in (torch.float32, torch.bfloat16, torch.float16, torch.float64)}


@dataclass(frozen=True)
class FlatUpdate:
    """A WeightUpdate packed into one buffer (see the module docstring)."""

    role: Role
    version: int
    last_bucket: bool
    bucket: int
    names: tuple[str, ...]
    dtypes: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]  # byte offset of each tensor in `buffer`, ALIGN-aligned
    buffer: np.ndarray = field(repr=False)  # uint8 [nbytes]

    @property
    def num_bytes(self) -> int:
        return int(self.buffer.nbytes)

    @staticmethod
    def pack(update: WeightUpdate) -> FlatUpdate:
        """The update's tensors in one host buffer: the buffer they already are views of (the learner's export fills
        its buckets in this layout, `flat_views`), else one copy of every tensor into a fresh buffer."""
        names = tuple(update.tensors)
        tensors = [update.tensors[n].detach() for n in names]
        offsets, end = aligned_offsets(t.numel() * t.element_size() for t in tensors)
        flat = backing_buffer(tensors, offsets, end)
        if flat is None or flat.device.type != "cpu":
            flat = torch.from_numpy(np.empty(end, dtype=np.uint8))
            for t, off in zip(tensors, offsets, strict=True):
                flat[off : off + t.numel() * t.element_size()].copy_(t.contiguous().reshape(-1).view(torch.uint8))
        buffer = flat.numpy()
        return FlatUpdate(
            role=update.role,
            version=update.version,
            last_bucket=update.last_bucket,
            bucket=update.bucket,
            names=names,
            dtypes=tuple(str(t.dtype) for t in tensors),
            shapes=tuple(tuple(t.shape) for t in tensors),
            offsets=tuple(offsets),
            buffer=buffer,
        )

    def unpack(self) -> WeightUpdate:
        """The WeightUpdate whose tensors are views of `buffer` (no copy)."""
        with warnings.catch_warnings():  # Ray's object-store arrays are read-only; nothing writes into them
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            flat = torch.from_numpy(self.buffer)
        tensors = split(self.names, self.dtypes, self.shapes, self.offsets, flat)
        return WeightUpdate(self.role, self.version, tensors, last_bucket=self.last_bucket, bucket=self.bucket)


def as_weight_update(update: WeightUpdate | FlatUpdate) -> WeightUpdate:
    return update.unpack() if isinstance(update, FlatUpdate) else update


def split(
    names: Iterable[str],
    dtypes: Iterable[str],
    shapes: Iterable[Iterable[int]],
    offsets: Iterable[int],
    flat: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """The tensors of a flat uint8 buffer, as views (no copy); an unknown dtype is a ValueError naming the tensor."""
    tensors: dict[str, torch.Tensor] = {}
    for name, dt, shape, off in zip(names, dtypes, shapes, offsets, strict=True):
        dtype = DTYPES.get(dt)
        if dtype is None:
            raise ValueError(f"weight bucket: parameter {name!r} has unsupported dtype {dt}")
        n = torch.Size(shape).numel() * torch.tensor([], dtype=dtype).element_size()
        tensors[name] = flat[off : off + n].view(dtype).view(tuple(shape))
    return tensors


def flat_views(specs: Sequence[tuple[torch.Size, torch.dtype]], device: torch.device) -> list[torch.Tensor]:
    """Uninitialised tensors of these (shape, dtype)s on `device`, as views of one flat uint8 buffer at the offsets
    `pack` uses: a bucket filled through them is packed (or broadcast) without another copy."""
    offsets, end = aligned_offsets(shape.numel() * dtype.itemsize for shape, dtype in specs)
    flat = torch.empty(end, dtype=torch.uint8, device=device)
    return list(split(range(len(specs)), (str(d) for _, d in specs), (s for s, _ in specs), offsets, flat).values())


def backing_buffer(tensors: Sequence[torch.Tensor], offsets: Sequence[int], end: int) -> torch.Tensor | None:
    """The uint8 buffer of `end` bytes that `tensors` are contiguous views of at exactly `offsets`, or None."""
    if not tensors:
        return None
    storage = tensors[0].untyped_storage()
    base = storage.data_ptr()
    if storage.nbytes() != end or any(
        t.untyped_storage().data_ptr() != base or t.data_ptr() - base != off or not t.is_contiguous()
        for t, off in zip(tensors, offsets, strict=True)
    ):
        return None
    return torch.empty(0, dtype=torch.uint8, device=tensors[0].device).set_(storage)


def aligned_offsets(sizes: Iterable[int]) -> tuple[list[int], int]:
    """Byte offsets of consecutive tensors of `sizes` bytes, each ALIGN-aligned; and the buffer's length."""
    offsets, end = [], 0
    for n in sizes:
        offsets.append(end)
        end += -(-n // ALIGN) * ALIGN
    return offsets, end
