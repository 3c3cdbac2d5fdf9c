"""bench/gpu_kit.py at tiny sizes on CPU: every measurement is in its JSON with sane values, and the plain torch
decoder it builds where transformers does not import has Qwen2's parameters (Qwen2.5-0.5B's count at full size), and
bench/cost_model.py takes a GPU run's rates from that JSON (and refuses a CPU run's)."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from bench import cost_model, gpu_kit

QWEN25_05B_PARAMS = 494_032_768  # Qwen/Qwen2.5-0.5B's published parameter count (tied embeddings)


@pytest.fixture(scope="module")
def kit_run(tmp_path_factory):
    """(the report main returned, the JSON it wrote) of one tiny CPU run."""
    out = tmp_path_factory.mktemp("gpu_kit")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.cuda, "is_available", lambda: False)  # the CPU path even on a GPU machine
        report = gpu_kit.main(["--quick", "--out", str(out)])
    return report, out / "gpu_kit.json"


def test_cpu_run_reports_every_measurement(kit_run):
    report, path = kit_run
    saved = json.loads(path.read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["device"] == "cpu" and saved["peak_flops"] == 989e12 and "Qwen2ForCausalLM" in saved["model"]
    learner = saved["learner"]
    assert learner["params"] > 0 and learner["tokens"] == 2 * 32 and learner["tokens_per_s"] > 0
    assert 0 < learner["mfu"] < 1
    transfer = saved["transfer"]
    assert transfer["bytes"] == 4 * learner["params"]  # fp32 on CPU
    assert transfer["broadcast_backend"] == "gloo" and transfer["broadcast_error"] is None
    assert transfer["ipc"] == "shared memory" and transfer["ipc_copy_error"] is None
    assert min(transfer["device_copy_gbps"], transfer["broadcast_gbps"], transfer["ipc_copy_gbps"]) > 0
    assert saved["zero3"]["measured"] and saved["zero3"]["tokens_per_s"] > 0  # DeepSpeed is in the CPU venv
    logprobs = saved["logprobs"]
    assert logprobs["tokens"] == 256 and logprobs["vocab"] == 1000 and logprobs["logits_bytes"] == 4 * 256 * 1000
    assert 0 <= logprobs["max_abs_diff"] < 1e-4  # chunked and full log_softmax agree
    assert logprobs["chunked_peak_bytes"] is None  # peak memory is a CUDA measurement
    assert 0 < saved["done"]["seconds"] < 120


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_plain_decoder_has_qwen2_shape(monkeypatch):
    meta, cpu = torch.device("meta"), torch.device("cpu")
    full_hf, built = gpu_kit.build_model(gpu_kit.FULL, meta, torch.bfloat16)
    tiny_hf, _ = gpu_kit.build_model(gpu_kit.TINY, cpu, torch.float32)
    assert "Qwen2ForCausalLM" in built
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ImportError
    full_plain, built = gpu_kit.build_model(gpu_kit.FULL, meta, torch.bfloat16)
    tiny_plain, _ = gpu_kit.build_model(gpu_kit.TINY, cpu, torch.float32)
    assert built.startswith("plain torch decoder")
    assert _params(full_plain) == _params(full_hf) == QWEN25_05B_PARAMS
    assert _params(tiny_plain) == _params(tiny_hf)
    assert tiny_plain(torch.zeros(2, 5, dtype=torch.long)).shape == (2, 5, gpu_kit.TINY.vocab)
    step = gpu_kit.learner(tiny_plain, gpu_kit.TINY, cpu)
    assert step["tokens_per_s"] > 0 and step["params"] == _params(tiny_hf)


def test_cost_model_takes_a_gpu_runs_rates(kit_run, tmp_path, capsys):
    kit = json.loads(kit_run[1].read_text())
    kit["device"], kit["learner"]["mfu"], kit["transfer"]["ipc_copy_gbps"] = "NVIDIA H100 80GB HBM3", 0.4, 1500.0
    path = tmp_path / "gpu_kit.json"
    path.write_text(json.dumps(kit))
    hw, note = cost_model.kit_rates(path, cost_model.Hardware())
    assert hw == cost_model.Hardware(train_mfu=0.4, copy_bytes_per_s=1.5e12)
    assert "NVIDIA H100" in note and "0.400" in note and "1500 GB/s" in note
    cost_model.main(["--rates", str(path)])
    measured = capsys.readouterr().out
    cost_model.main([])
    assert measured.startswith(note) and measured.removeprefix(note + "\n") != capsys.readouterr().out


@pytest.mark.bad_input("cost_model --rates names a CPU run's JSON or a file that is not the kit's", "exits naming why")
def test_cost_model_refuses_cpu_or_foreign_rates(kit_run, tmp_path):
    with pytest.raises(SystemExit, match="measured on CPU"):
        cost_model.main(["--rates", str(kit_run[1])])
    (tmp_path / "other.json").write_text('{"learner": {}}')
    with pytest.raises(SystemExit, match="not a JSON written by bench/gpu_kit.py"):
        cost_model.main(["--rates", str(tmp_path / "other.json")])
