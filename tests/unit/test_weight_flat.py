"""FlatUpdate: a bucket as one flat buffer, unpacked into views without a copy, exact for every dtype."""

import pickle

import numpy as np
import pytest
import torch

from actors.weight_flat import ALIGN, FlatUpdate, as_weight_update, flat_views, split
from bond.records import Role, WeightUpdate


def test_pack_unpack_is_exact_aligned_and_copy_free():
    gen = torch.Generator().manual_seed(0)
    tensors = {
        "a": torch.randn(3, 5, generator=gen),
        "b": torch.randn(7, generator=gen).to(torch.bfloat16),
        "c": torch.randn(2, 3, generator=gen).to(torch.float16).t(),
        "d": torch.randn(1, generator=gen),
    }
    flat = FlatUpdate.pack(WeightUpdate(Role.POLICY, 4, tensors, last_bucket=False, bucket=3))
    assert all(off % ALIGN == 0 for off in flat.offsets) and isinstance(flat.buffer, np.ndarray)
    shipped = pickle.loads(pickle.dumps(flat, protocol=5))  # what Ray's object store does
    update = as_weight_update(shipped)
    assert (update.role, update.version, update.last_bucket, update.bucket) == (Role.POLICY, 4, False, 3)
    for name, t in tensors.items():
        got = update.tensors[name]
        assert got.dtype == t.dtype and got.shape == t.shape and torch.equal(got, t)
        base = torch.from_numpy(shipped.buffer).data_ptr()
        assert base <= got.data_ptr() < base + shipped.num_bytes  # a view of the buffer, not a copy
    assert as_weight_update(update) is update


def test_unknown_dtype_is_named():
    with pytest.raises(ValueError, match="'x' has unsupported dtype torch.int8"):
        split(["x"], ["torch.int8"], [[2]], [0], torch.zeros(16, dtype=torch.uint8))


def test_a_bucket_filled_through_flat_views_is_packed_without_a_copy():
    """The learner's export fills each bucket through flat_views: pack (and the broadcast) then ship that buffer as
    it is; tensors not laid out so (a view of a larger buffer, another order) are copied, exactly."""
    shapes = [(torch.Size([3, 5]), torch.float32), (torch.Size([7]), torch.bfloat16), (torch.Size([2]), torch.float32)]
    views = flat_views(shapes, torch.device("cpu"))
    for v in views:
        v.copy_(torch.arange(v.numel()).reshape(v.shape))
    tensors = dict(zip("abc", views, strict=True))
    flat = FlatUpdate.pack(WeightUpdate(Role.POLICY, 1, tensors, last_bucket=True))
    assert flat.buffer.ctypes.data == views[0].untyped_storage().data_ptr()  # the same memory: no copy
    reordered = FlatUpdate.pack(WeightUpdate(Role.POLICY, 1, dict(zip("cba", views[::-1], strict=True)), True))
    assert reordered.buffer.ctypes.data != views[0].untyped_storage().data_ptr()
    partial = FlatUpdate.pack(WeightUpdate(Role.POLICY, 1, {"a": views[0]}, True))  # the buffer holds more
    assert partial.buffer.ctypes.data != views[0].untyped_storage().data_ptr()
    for packed, expected in ((flat, tensors), (reordered, tensors), (partial, {"a": views[0]})):
        got = packed.unpack().tensors
        assert got.keys() == expected.keys() and all(torch.equal(got[n], expected[n]) for n in expected)
