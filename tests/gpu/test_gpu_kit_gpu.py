"""bench/gpu_kit.py at full size on one GPU (Qwen2.5-0.5B's shape, a 151 936 vocabulary): the learner's MFU, the
weight copy and transfer rates, and the chunked log-probs' memory against a full-vocabulary log_softmax.
Run on a GPU machine: `pytest -m gpu tests/gpu/test_gpu_kit_gpu.py -s` (or `python -m bench.gpu_kit`)."""

from __future__ import annotations

import pytest

from bench import gpu_kit

pytestmark = pytest.mark.gpu


def test_gpu_kit_full_size(tmp_path):
    report = gpu_kit.main(["--out", str(tmp_path)])
    assert report["dtype"] == "bfloat16" and report["sizes"]["vocab"] == 151936
    learner = report["learner"]
    assert learner["params"] == 494_032_768 and 0.05 < learner["mfu"] < 1
    transfer = report["transfer"]
    assert transfer["bytes"] == 2 * learner["params"] and transfer["ipc"] == "CUDA IPC"
    assert transfer["device_copy_gbps"] > 100 and transfer["ipc_copy_gbps"] > 100
    assert (transfer["broadcast_gbps"] or 0) > 0 or transfer["broadcast_error"]  # NCCL may refuse two ranks on one GPU
    logprobs = report["logprobs"]
    assert logprobs["chunked_peak_bytes"] < logprobs["naive_peak_bytes"] / 4  # never a [tokens, vocab] fp32 copy
    assert logprobs["max_abs_diff"] < 1e-3
    assert report["done"]["seconds"] < 8 * 60
