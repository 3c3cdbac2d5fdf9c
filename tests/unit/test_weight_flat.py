"""FlatUpdate: a bucket as one flat buffer, unpacked into views without a copy, exact for every dtype."""

import pickle

import numpy as np
import pytest
import torch

from actors.weight_flat import ALIGN, FlatUpdate, as_weight_update, split
from bond.records import Role, WeightUpdate


def test_pack_unpack_is_exact_aligned_and_copy_free():
    gen = torch.Generator().manual_seed(0)
    tensors = {
        "a": torch.randn(3, 5, generator=gen),
        "b": torch.randn(7, generator=gen).to(torch.bfloat16),
        "c": torch.randn(2, 3, generator=gen).to(torch.float16).t(),
        "d": torch.randn(1, generator=gen),
    }
    flat = FlatUpdate.pack(WeightUpdate(Role.POLICY, 4, tensors, last_bucket=False))
    assert all(off % ALIGN == 0 for off in flat.offsets) and isinstance(flat.buffer, np.ndarray)
    shipped = pickle.loads(pickle.dumps(flat, protocol=5))  # what Ray's object store does
    update = as_weight_update(shipped)
    assert (update.role, update.version, update.last_bucket) == (Role.POLICY, 4, False)
    for name, t in tensors.items():
        got = update.tensors[name]
        assert got.dtype == t.dtype and got.shape == t.shape and torch.equal(got, t)
        base = torch.from_numpy(shipped.buffer).data_ptr()
        assert base <= got.data_ptr() < base + shipped.num_bytes  # a view of the buffer, not a copy
    assert as_weight_update(update) is update


def test_unknown_dtype_is_named():
    with pytest.raises(ValueError, match="'x' has unsupported dtype torch.int8"):
        split(["x"], ["torch.int8"], [[2]], [0], torch.zeros(16, dtype=torch.uint8))
