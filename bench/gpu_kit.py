"""The GPU kit: `python -m bench.gpu_kit [--quick] [--out DIR]` measures what bench/cost_model.py guesses.

1. learner: forward + backward + AdamW steps of a random Qwen2-0.5B-shaped model (transformers' Qwen2 when it
   imports, else a plain torch decoder of the same shape), bf16 on CUDA: tokens/s and MFU = 6 * params *
   tokens/s over the H100's dense bf16 peak; a 1-rank ZeRO-3 step through learner/deepspeed_engine.py when
   DeepSpeed and transformers import, else "not measured" and why.
2. transfer: the model's bytes copied on the device (tensor.copy_), a two-process torch.distributed broadcast
   (NCCL on CUDA, which may refuse two ranks on one GPU; gloo on CPU), and a copy by a second process of a
   tensor shared through torch.multiprocessing (CUDA IPC on a GPU, shared memory on CPU), in GB/s.
3. logprobs: extra peak memory (CUDA) of the project's chunked log-probs (bond.objective.sequence_logprobs)
   against a full-vocabulary fp32 log_softmax over the same logits, and their max abs difference.
Needs torch only; without CUDA it runs at tiny sizes (as --quick). Prints each result and rewrites
DIR/gpu_kit.json after each one (a run cut short keeps what it measured).
"""

from __future__ import annotations

import argparse
import json
import socket
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from bond.objective import sequence_logprobs

PEAK_FLOPS = 989e12  # H100 SXM dense bf16, the MFU denominator (also for other devices: it is a fixed yardstick)


@dataclass(frozen=True)
class Sizes:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    batch: int
    seq: int
    logprob_tokens: int
    reps: int


FULL = Sizes(896, 24, 14, 2, 4864, 151936, batch=8, seq=1024, logprob_tokens=8192, reps=5)  # Qwen2.5-0.5B's shape
TINY = Sizes(64, 2, 4, 2, 128, 1000, batch=2, seq=32, logprob_tokens=256, reps=3)


class _Block(nn.Module):
    """A Qwen2 decoder layer without rotary embeddings (same parameters and matmul FLOPs)."""

    def __init__(self, s: Sizes) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = s.heads, s.kv_heads, s.hidden // s.heads
        self.norm1, self.norm2 = nn.RMSNorm(s.hidden), nn.RMSNorm(s.hidden)
        self.qkv = nn.Linear(s.hidden, (s.heads + 2 * s.kv_heads) * self.head_dim)
        self.o = nn.Linear(s.hidden, s.hidden, bias=False)
        self.up = nn.Linear(s.hidden, 2 * s.ffn, bias=False)
        self.down = nn.Linear(s.ffn, s.hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        kv = self.kv_heads * self.head_dim
        q, k, v = self.qkv(self.norm1(x)).split([self.heads * self.head_dim, kv, kv], -1)
        q = q.view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k, v = (z.view(b, t, self.kv_heads, self.head_dim).transpose(1, 2) for z in (k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        x = x + self.o(a.transpose(1, 2).reshape(b, t, -1))
        gate, up = self.up(self.norm2(x)).chunk(2, -1)
        return x + self.down(F.silu(gate) * up)


class _Decoder(nn.Module):
    def __init__(self, s: Sizes) -> None:
        super().__init__()
        self.embed = nn.Embedding(s.vocab, s.hidden)
        self.blocks = nn.ModuleList(_Block(s) for _ in range(s.layers))
        self.norm = nn.RMSNorm(s.hidden)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        for block in self.blocks:
            h = block(h)
        return self.norm(h) @ self.embed.weight.T  # tied head, as Qwen2.5-0.5B


def build_model(s: Sizes, device: torch.device, dtype: torch.dtype) -> tuple[nn.Module, str]:
    try:
        import transformers
        from transformers import Qwen2Config, Qwen2ForCausalLM
    except ImportError:
        with device:
            return _Decoder(s).to(dtype), "plain torch decoder (transformers does not import)"
    config = Qwen2Config(
        vocab_size=s.vocab, hidden_size=s.hidden, intermediate_size=s.ffn, num_hidden_layers=s.layers,
        num_attention_heads=s.heads, num_key_value_heads=s.kv_heads, tie_word_embeddings=True,
    )  # fmt: skip
    with device:
        model = Qwen2ForCausalLM(config)
    return model.to(dtype), f"transformers {transformers.__version__} Qwen2ForCausalLM"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, args: tuple, reps: int, device: torch.device) -> float:
    """Mean seconds of fn(*args) over reps calls, after one warm-up call."""
    fn(*args)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn(*args)
    _sync(device)
    return (time.perf_counter() - t0) / reps


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, ids: torch.Tensor) -> None:
    out = model(ids[:, :-1])
    logits = getattr(out, "logits", out)  # transformers' output record, or the plain decoder's tensor
    loss = -sequence_logprobs(logits, ids[:, 1:], torch.ones_like(ids[:, 1:])).mean()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def learner(model: nn.Module, s: Sizes, device: torch.device) -> dict:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids = torch.randint(s.vocab, (s.batch, s.seq + 1), device=device)
    params = sum(p.numel() for p in model.parameters())
    seconds = _timed(_train_step, (model, opt, ids), s.reps, device)
    tokens_per_s = s.batch * s.seq / seconds
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"params": params, "tokens": s.batch * s.seq, "step_s": seconds, "tokens_per_s": tokens_per_s,
            "mfu": 6 * params * tokens_per_s / PEAK_FLOPS, "peak_bytes": peak}  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _broadcast_rank(rank: int, backend: str, port: int, nbytes: int, reps: int, device: str, results) -> None:
    try:
        dist.init_process_group(
            backend, f"tcp://127.0.0.1:{port}", timeout=timedelta(seconds=60), world_size=2, rank=rank
        )
        buf = torch.zeros(nbytes, dtype=torch.uint8, device=device)
        seconds = _timed(dist.broadcast, (buf, 0), reps, torch.device(device))
        if rank == 0:
            results.put(nbytes / seconds / 1e9)
        dist.destroy_process_group()
    except Exception as e:  # reported, not raised: a refused backend is a result
        results.put(f"rank {rank}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def _ipc_receiver(shared, reps: int, results) -> None:
    try:
        src = shared.get()  # the sender's tensor: CUDA IPC handle on a GPU, shared memory on CPU
        dst = torch.empty_like(src)
        results.put(src.numel() * src.element_size() / _timed(dst.copy_, (src,), reps, src.device) / 1e9)
    except Exception as e:  # reported, not raised
        results.put(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def _two_processes(target, args: tuple, payload: torch.Tensor | None = None) -> float | str:
    """target(*args, results) in ranks 0 and 1, or, given a payload, target(queue, *args, results) in one process
    that takes the payload from the queue; its first result (GB/s, or an error's words)."""
    ctx = mp.get_context("spawn")
    results, shared = ctx.Queue(), ctx.Queue()
    heads = [(shared,)] if payload is not None else [(0,), (1,)]
    procs = [ctx.Process(target=target, args=head + args + (results,)) for head in heads]
    for p in procs:
        p.start()
    if payload is not None:
        shared.put(payload)
    try:
        return results.get(timeout=120)
    except Exception:
        return "no result in 120 s"
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()


def transfer(model: nn.Module, s: Sizes, device: torch.device) -> dict:
    src = torch.cat([p.detach().reshape(-1).view(torch.uint8) for p in model.parameters()])
    dst = torch.empty_like(src)
    copy = src.numel() / _timed(dst.copy_, (src,), s.reps, device) / 1e9
    backend = "nccl" if device.type == "cuda" else "gloo"
    tensor = src if device.type == "cuda" else src.share_memory_()
    bcast = _two_processes(_broadcast_rank, (backend, _free_port(), src.numel(), s.reps, str(device)))
    ipc = _two_processes(_ipc_receiver, (s.reps,), payload=tensor)
    return {"bytes": src.numel(), "device_copy_gbps": copy, "broadcast_backend": backend, **_rate("broadcast", bcast),
            "ipc": "CUDA IPC" if device.type == "cuda" else "shared memory", **_rate("ipc_copy", ipc)}  # fmt: skip


def _rate(name: str, result: float | str) -> dict:
    """{name_gbps, name_error}: one of them None."""
    return {f"{name}_gbps": result if isinstance(result, float) else None,
            f"{name}_error": result if isinstance(result, str) else None}  # fmt: skip


def _peak(fn, args: tuple, device: torch.device) -> tuple[torch.Tensor, int | None]:
    """fn(*args) and the memory it allocated beyond what was allocated before (CUDA only)."""
    if device.type != "cuda":
        return fn(*args), None
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    out = fn(*args)
    torch.cuda.synchronize(device)
    return out, torch.cuda.max_memory_allocated(device) - base


def _naive_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), -1).gather(-1, ids[:, None]).squeeze(-1)


def logprobs(s: Sizes, device: torch.device, dtype: torch.dtype) -> dict:
    g = torch.Generator(device).manual_seed(0)
    hidden = torch.randn(s.logprob_tokens, s.hidden, generator=g, device=device, dtype=dtype)
    head = torch.randn(s.vocab, s.hidden, generator=g, device=device, dtype=dtype) * s.hidden**-0.5
    ids = torch.randint(s.vocab, (s.logprob_tokens,), generator=g, device=device)
    logits = hidden @ head.T  # [tokens, vocab] in the model's dtype, as the learner's forward returns them
    del hidden, head
    # one token per row: sequence_logprobs then returns per-token log-probs, comparable one by one
    chunked, chunked_peak = _peak(
        sequence_logprobs, (logits[:, None], ids[:, None], torch.ones_like(ids[:, None])), device
    )
    naive, naive_peak = _peak(_naive_logprobs, (logits, ids), device)
    return {"tokens": s.logprob_tokens, "vocab": s.vocab, "logits_bytes": logits.numel() * logits.element_size(),
            "chunked_peak_bytes": chunked_peak, "naive_peak_bytes": naive_peak,
            "max_abs_diff": (chunked - naive).abs().max().item()}  # fmt: skip


def _zero3_step(engine, ids: torch.Tensor) -> None:
    inputs, targets = ids[:, :-1], ids[:, 1:]
    keep = torch.arange(inputs.shape[1], device=ids.device)
    logits = engine.forward(inputs, torch.ones_like(inputs), keep)
    engine.backward(-sequence_logprobs(logits, targets, torch.ones_like(targets)).mean())
    engine.step(1e-5)


def zero3(s: Sizes, device: torch.device, dtype: torch.dtype) -> dict:
    """A 1-rank ZeRO-3 step through the project's DeepSpeedEngine, if DeepSpeed and transformers import."""
    try:
        import transformers  # noqa: F401  (the engine's forward is a Hugging Face model's)

        from bond.config import BondConfig
        from learner import rendezvous
        from learner.config import Device, Dtype, LearnerConfig
        from learner.deepspeed_engine import DeepSpeedEngine
    except ImportError as e:
        return {"measured": False, "why": f"{type(e).__name__}: {e}"}
    on_cuda = device.type == "cuda"
    rendezvous.join(0, 1, "127.0.0.1", _free_port(), device.type, timeout_s=60)  # also the env DeepSpeed reads
    try:
        model, _ = build_model(s, device, dtype)
        cfg = LearnerConfig(zero_stage=3, micro_batch_prompts=s.batch, dtype=Dtype.BF16 if on_cuda else Dtype.FP32,
                            device=Device.CUDA if on_cuda else Device.CPU)  # fmt: skip
        engine = DeepSpeedEngine(model, BondConfig(), cfg, world_size=1, micro_batches=1)
        ids = torch.randint(s.vocab, (s.batch, s.seq + 1), device=device)
        seconds = _timed(_zero3_step, (engine, ids), s.reps, device)
    finally:
        dist.destroy_process_group()
    return {"measured": True, "step_s": seconds, "tokens_per_s": s.batch * s.seq / seconds}


def _record(report: dict, out: Path, key: str, values: dict) -> None:
    report[key] = values
    print(f"{key}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()))
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_kit.json").write_text(json.dumps(report, indent=1))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu_kit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes (always so without CUDA)")
    parser.add_argument("--out", type=Path, default=Path("runs/gpu_kit"), help="where gpu_kit.json goes")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    cuda = torch.cuda.is_available()
    device, dtype = (torch.device("cuda"), torch.bfloat16) if cuda else (torch.device("cpu"), torch.float32)
    s = FULL if cuda and not args.quick else TINY
    torch.manual_seed(0)
    model, built = build_model(s, device, dtype)
    report: dict = {"device": torch.cuda.get_device_name(device) if cuda else "cpu", "torch": torch.__version__,
                    "dtype": str(dtype).removeprefix("torch."), "model": built, "peak_flops": PEAK_FLOPS}  # fmt: skip
    print(f"kit: {report['device']}, torch {report['torch']}, {report['dtype']}, {built}, peak {PEAK_FLOPS:.3g} FLOP/s")
    _record(report, args.out, "sizes", asdict(s))
    _record(report, args.out, "learner", learner(model, s, device))
    _record(report, args.out, "transfer", transfer(model, s, device))
    del model
    _record(report, args.out, "logprobs", logprobs(s, device, dtype))
    _record(report, args.out, "zero3", zero3(s, device, dtype))
    _record(report, args.out, "done", {"seconds": time.perf_counter() - t0})
    print(f"wrote {args.out / 'gpu_kit.json'}")
    return report


if __name__ == "__main__":
    main()
