"""TRL's RLOOTrainer on the benchmark's model, reward model and prompts: prompts/s, per-step phase seconds and
the mean completion length.

Runs in its own venv (.venv-trl, `make bench-trl`: torch 2.13 CPU + trl, no Ray/vLLM/DeepSpeed), started by
bench/bench_system.py as a subprocess; imports nothing from this project. Same batch as the J-BOND loop:
`--prompts-per-step` prompts x `--samples` completions (J-BOND: 1 policy + 2 anchor), <= `--max-new-tokens`
tokens, sampling at temperature 1, one optimizer step per generation batch, TRL's default KL coefficient
(a reference-model forward per step, like the J-BOND learner's log pi_ref). Prints one JSON line.

Phases: "sample" is TRL's `_generate` (HF generate), "score" its `_calculate_rewards` (the reward model), and
"learn" the rest of the step (old/ref log-probs, forward + backward, Adam); there is no weight sync in process.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--reward", required=True)
    ap.add_argument("--prompts", required=True, help="jsonl with a 'prompt' field per line")
    ap.add_argument("--prompts-per-step", type=int, default=32)
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--timed", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-5)
    args = ap.parse_args()

    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    steps = args.warmup + args.timed
    with open(args.prompts) as f:
        prompts = [json.loads(line)["prompt"] for line in f if line.strip()]
    needed = steps * args.prompts_per_step
    dataset = Dataset.from_dict({"prompt": (prompts * (needed // len(prompts) + 1))[:needed]})
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    stamps: list[float] = []
    phases: list[dict[str, float]] = []
    lengths: list[float] = []  # each step's mean completion length (TRL's own metric)

    class Stamps(TrainerCallback):
        def on_step_begin(self, *_, **__):
            phases.append({"sample": 0.0, "score": 0.0})
            stamps.append(time.perf_counter())

        def on_step_end(self, *_, **__):
            stamps.append(time.perf_counter())

        def on_log(self, *_, logs=None, **__):
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])

    with tempfile.TemporaryDirectory() as out:
        config = RLOOConfig(
            output_dir=out,
            per_device_train_batch_size=args.prompts_per_step * args.samples,
            num_generations=args.samples,
            max_completion_length=args.max_new_tokens,
            max_steps=steps,
            learning_rate=args.lr,
            temperature=1.0,
            top_p=1.0,
            logging_steps=1,
            report_to="none",
            save_strategy="no",
            use_cpu=True,
            seed=0,
            dataloader_num_workers=0,
            shuffle_dataset=False,
        )
        trainer = RLOOTrainer(
            model=args.model,
            reward_funcs=args.reward,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[Stamps()],
        )

        def timed(name: str, fn):
            def wrapper(*a, **kw):
                t0 = time.perf_counter()
                try:
                    return fn(*a, **kw)
                finally:
                    phases[-1][name] += time.perf_counter() - t0

            return wrapper

        trainer._generate = timed("sample", trainer._generate)
        trainer._calculate_rewards = timed("score", trainer._calculate_rewards)
        trainer.train()

    begins, ends = stamps[0::2], stamps[1::2]
    seconds = ends[-1] - ends[args.warmup - 1]
    split = {k: sum(p[k] for p in phases[args.warmup :]) / args.timed for k in ("sample", "score")}
    step_s = [e - b for b, e in zip(begins[args.warmup :], ends[args.warmup :], strict=True)]
    split["learn"] = sum(step_s) / args.timed - split["sample"] - split["score"]
    print(
        json.dumps(
            {
                "prompts_per_s": args.timed * args.prompts_per_step / seconds,
                "seconds": split,
                "tokens": sum(lengths[args.warmup :]) / max(len(lengths[args.warmup :]), 1),
                "trl": __import__("trl").__version__,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
