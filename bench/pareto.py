"""`make pareto`: reward vs KL(pi || ref) of every method over seeds, against the Best-of-N curve of the reference.

    python -m bench.pareto [--config configs/local.yaml] [--seeds 0 1 2] [--steps 60] [--jobs 2] [--out runs/pareto]

Each (method, seed) is one training run on the in-process system (HF sampler, in-process reward model,
plain-torch learner: the same samplers, reward model, learner and loop as a Ray job without its start-up,
and no vLLM engine, so it runs beside other work on a small machine). Every run is evaluated on the
held-out prompts (eval.prompts of the config) before training and every --eval-every steps with
cluster.training.evaluation: mean reward and KL(pi || ref) by the same estimators for every method. The BoN curve
(n = 1..64) comes from 128 reference samples per held-out prompt, once per seed.

ReST (algorithm=rest) trains through the same driver as a job (cluster.main.train_algorithm: Grow/Improve
rounds, Grow datasets in the run's directory). GKD distils a teacher trained here: the J-BOND run of the same
seed at --gkd-teacher-eta, which exports its final policy (final_policy/, the job's export code) and runs first;
each GKD run waits for its teacher's.

A finished run leaves result.json in its directory and is not rerun (delete the directory to redo it), so a
second invocation with more methods only runs what is new. A teacher's cached run counts as finished only with
its final_policy/, and a GKD run's cache key includes its teacher's weights digest, so a retrained teacher
retrains its students. Outputs: OUT/pareto.png, OUT/pareto.md (the
table and the claims with their error bars), OUT/summary.json. bench/pareto_report.py does the maths.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import hashlib
import json
import multiprocessing
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import pareto_report
from bond.config import ConfigError


@dataclass(frozen=True)
class Variant:
    name: str  # legend and table label
    family: str  # "J-BOND" | "REINFORCE" | "BOND" ...: variants of one family share a colour
    overrides: tuple[str, ...]  # dotted config overrides on top of the base config
    teacher: str | None = None  # GKD: the variant whose final policy (same seed) it distils


# ReST: a Grow of 64 prompts x 8 samples, then SFT on the top 20 % (q = 0.8) and the top 10 % (q = 0.9): about
# 7 + 4 steps of 16 samples per round, so 60 steps are ~5.5 rounds and ~2800 policy samples, J-BOND's budget
# (60 steps x 16 prompts x 3 samples = 2880).
REST = (
    "algorithm.algorithm=rest",
    "algorithm.rest_grow_prompts=64",
    "algorithm.rest_samples_per_prompt=8",
    "algorithm.rest_quantiles=[0.8, 0.9]",
)


def variants(etas, betas_rl, bond_ns, rest: bool = True, gkd_teacher_eta: float | None = 0.2) -> list[Variant]:
    out = [
        Variant(f"J-BOND eta={e:g}", "J-BOND", ("algorithm.algorithm=jbond", "algorithm.n=2", f"algorithm.eta={e}"))
        for e in etas
    ]
    out += [
        Variant(f"REINFORCE beta_RL={b:g}", "REINFORCE", ("algorithm.algorithm=reinforce", f"algorithm.beta_rl={b}"))
        for b in betas_rl
    ]
    out += [Variant(f"BOND N={n}", "BOND", ("algorithm.algorithm=bond", f"algorithm.n={n}")) for n in bond_ns]
    if rest:
        out.append(Variant("ReST q=0.8,0.9", "ReST", REST))
    if gkd_teacher_eta is not None:
        out.append(
            Variant(
                f"GKD from J-BOND eta={gkd_teacher_eta:g}",
                "GKD",
                ("algorithm.algorithm=gkd", "algorithm.gkd_beta=0.5"),
                teacher=f"J-BOND eta={gkd_teacher_eta:g}",
            )
        )
    return out


def teacher_override(out: Path, teacher: str, seed: int) -> str:
    return f"algorithm.gkd_teacher={run_dir(out, teacher, seed) / FINAL_POLICY}"


def run_dir(out: Path, name: str, seed: int) -> Path:
    return out / _slug(name) / f"seed{seed}"


FINAL_POLICY = "final_policy"


def build_job(config: Path, overrides: list[str]):
    from cluster.config import loading
    from cluster.config.job import JobConfig

    data = loading.load_document(config)
    for o in overrides:
        loading.apply_override(data, o)
    return loading.build(JobConfig, data)


def _base_overrides(args) -> list[str]:
    return [
        "models.sampler_backend=hf",
        "learner.zero_stage=0",
        f"run.steps={args.steps}",
        f"algorithm.prompts_per_step={args.prompts_per_step}",
        f"eval.samples_per_prompt={args.eval_samples}",
        f"eval.every_steps={args.eval_every}",
        "eval.greedy=false",
        "run.progress=false",
    ]


def code_version() -> str:
    """The commit the runs are made with (+dirty when tracked files differ from it): recorded with each result."""
    import subprocess

    def git(*a: str) -> str:
        return subprocess.run(["git", *a], capture_output=True, text=True, check=False).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def _slug(name: str) -> str:
    return name.lower().replace(" ", "_").replace(",", "_").replace("=", "").replace("-", "")


def weights_digest(model_dir: Path) -> str:
    """sha256 of a model directory's weight files: what a student's cached run was distilled from."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors weights (the teacher's run did not export)")
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def run_key(overrides: list[str], teacher: Path | None = None) -> str:
    """Cache key of a run: its overrides, and for a student its teacher's weights (a plain run's key is the
    overrides' alone, as before teachers existed, so earlier results stay valid)."""
    material = overrides if teacher is None else [overrides, weights_digest(teacher)]
    return hashlib.sha256(json.dumps(material).encode()).hexdigest()[:16]


def cached(out: Path, key: str, export: bool) -> dict | None:
    done = out / "result.json"
    if not done.exists():
        return None
    result = json.loads(done.read_text())
    if result.get("key") != key or (export and not (out / FINAL_POLICY / "config.json").exists()):
        return None
    return result


def train_and_evaluate(
    config: Path, overrides: list[str], out: Path, export: bool = False, teacher: Path | None = None
) -> dict:
    """One (method, seed) run; evaluation rows for step 0, every eval.every_steps and the last step.
    export: also write the final policy to out/final_policy (a teacher's). teacher: the model directory a GKD
    run distils (already named in its overrides), whose weights join the cache key."""
    import torch

    from cluster.config.prompts import PromptCursor, load_prompts
    from cluster.core import LoopState
    from cluster.main import train_algorithm
    from cluster.runtime.in_process import in_process_system
    from cluster.training import evaluation

    torch.set_num_threads(1)  # --jobs processes share the cores
    job = build_job(config, overrides)
    key = run_key(overrides, teacher)
    if (result := cached(out, key, export)) is not None:
        return result
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").unlink(missing_ok=True)  # a run cut short must leave neither result nor export behind
    shutil.rmtree(out / FINAL_POLICY, ignore_errors=True)
    split = evaluation.split_prompts(load_prompts(job.prompts).prompts, job.eval, job.prompts.seed)
    rows, notes, t0 = [], [], time.perf_counter()
    system = in_process_system(job)
    try:

        def record(step: int) -> None:
            (r,) = evaluation.evaluate(system, job, split.heldout, step)
            rows.append(r.row())

        record(0)

        def on_step(rec) -> None:
            if evaluation.due(rec.state.step, job.eval, job.run.steps):
                record(rec.state.step)

        train_algorithm(job, system, split.train, LoopState(0, PromptCursor()), on_step, out, note=notes.append)
        if export:
            system.learner.export_hf(out / FINAL_POLICY)
    finally:
        system.shutdown()
    result = {
        "key": key,
        "overrides": overrides,
        "eval": rows,
        "seconds": time.perf_counter() - t0,
        "code": code_version(),
        **({"notes": notes} if notes else {}),
    }
    (out / "result.json").write_text(json.dumps(result, indent=1))
    return result


def bon_for_seed(config: Path, overrides: list[str], out: Path, max_n: int, samples: int) -> dict:
    import torch

    from bond.records import Role
    from cluster.config.prompts import load_prompts
    from cluster.runtime.in_process import in_process_system
    from cluster.training import evaluation

    torch.set_num_threads(1)
    job = build_job(config, overrides)
    key = hashlib.sha256(json.dumps([overrides, max_n, samples]).encode()).hexdigest()[:16]
    done = out / "result.json"
    if done.exists() and json.loads(done.read_text()).get("key") == key:
        return json.loads(done.read_text())
    out.mkdir(parents=True, exist_ok=True)
    split = evaluation.split_prompts(load_prompts(job.prompts).prompts, job.eval, job.prompts.seed)
    system = in_process_system(job)
    try:  # before any update the policy actors hold the reference weights
        points = evaluation.bon_curve(
            system, job, split.heldout, Role.POLICY, max_n=max_n, samples_per_prompt=samples, seed=job.run.seed
        )
    finally:
        system.shutdown()
    result = {"key": key, "points": [dataclasses.asdict(p) for p in points]}
    done.write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("configs/local.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--prompts-per-step", type=int, default=16)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--eval-samples", type=int, default=8, help="samples per held-out prompt at each evaluation")
    parser.add_argument("--etas", type=float, nargs="+", default=[0.05, 0.2], help="J-BOND anchor EMA rates")
    parser.add_argument("--beta-rl", type=float, nargs="+", default=[0.001, 0.01, 0.1, 1.0])
    parser.add_argument(
        "--bond-n",
        type=int,
        nargs="*",
        default=[4, 16],
        help="BOND-N orders (skipped where the checkout's config refuses algorithm=bond)",
    )
    parser.add_argument(
        "--rest",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ReST (Grow 64 prompts x 8 samples, Improve at q = 0.8, 0.9)",
    )
    parser.add_argument(
        "--gkd-teacher-eta",
        type=float,
        default=0.2,
        help="GKD distils the J-BOND run of this eta (one of --etas; same seed); a negative value leaves GKD out",
    )
    parser.add_argument("--bon-max-n", type=int, default=64)
    parser.add_argument("--bon-samples", type=int, default=128, help="reference samples per held-out prompt")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one torch thread each)")
    parser.add_argument("--out", type=Path, default=Path("runs/pareto"))
    args = parser.parse_args(argv)
    command = "python -m bench.pareto " + shlex.join(sys.argv[1:] if argv is None else argv)
    t0 = time.perf_counter()

    base = _base_overrides(args)
    runnable, skipped = [], {}
    teacher_eta = args.gkd_teacher_eta if args.gkd_teacher_eta >= 0 else None
    for v in variants(args.etas, args.beta_rl, args.bond_n, rest=args.rest, gkd_teacher_eta=teacher_eta):
        try:
            if v.teacher is not None and v.teacher not in {r.name for r in runnable}:
                raise ValueError(f"its teacher {v.teacher} is not run (--etas)")
            build_job(
                args.config,
                base + list(v.overrides) + ([teacher_override(args.out, v.teacher, 0)] if v.teacher else []),
            )
        except (ConfigError, ValueError) as e:
            skipped[v.name] = str(e).splitlines()[0]
            print(f"skipped {v.name}: {skipped[v.name]}", flush=True)
            continue
        runnable.append(v)

    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no torch/HF state shared across runs
    with concurrent.futures.ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
        bon_futures = {
            seed: pool.submit(
                bon_for_seed,
                args.config,
                base + [f"run.seed={seed}"],
                args.out / "bon" / f"seed{seed}",
                args.bon_max_n,
                args.bon_samples,
            )
            for seed in args.seeds
        }
        teachers = {v.teacher for v in runnable if v.teacher}
        futures = {
            (v.name, seed): pool.submit(
                train_and_evaluate,
                args.config,
                base + list(v.overrides) + [f"run.seed={seed}"],
                run_dir(args.out, v.name, seed),
                export=v.name in teachers,
            )
            for v in runnable
            if v.teacher is None
            for seed in args.seeds
        }
        for v in runnable:  # students last: each waits for its teacher's run of the same seed to export
            for seed in args.seeds if v.teacher else ():
                futures[(v.teacher, seed)].result()
                futures[(v.name, seed)] = pool.submit(
                    train_and_evaluate,
                    args.config,
                    base + list(v.overrides) + [teacher_override(args.out, v.teacher, seed), f"run.seed={seed}"],
                    run_dir(args.out, v.name, seed),
                    teacher=run_dir(args.out, v.teacher, seed) / FINAL_POLICY,
                )
        runs: dict[str, list[list[dict]]] = {v.name: [] for v in runnable}
        codes: dict[str, set[str]] = {}
        for (name, seed), f in futures.items():
            try:
                result = f.result()
            except NotImplementedError as e:  # e.g. an algorithm this checkout's learner does not run yet
                skipped[name] = str(e).splitlines()[0]
                print(f"skipped {name}: {skipped[name]}", flush=True)
                runs.pop(name, None)
                continue
            if name not in runs:
                continue
            runs[name].append(result["eval"])
            codes.setdefault(result.get("code", "unknown"), set()).add(name)
            last = result["eval"][-1]
            print(
                f"{name:<26} seed {seed}: reward {last['reward']:+.3f}  KL {last['kl_ref']:.3f} "
                f"({result.get('seconds', 0):.0f} s)",
                flush=True,
            )
        bon = [bon_futures[s].result()["points"] for s in args.seeds]

    families = {v.name: v.family for v in runnable}
    summary = pareto_report.summarise(runs, bon, teachers={v.name: v.teacher for v in runnable if v.teacher})
    pareto_report.plot(summary, families, args.out / "pareto.png")
    markdown = pareto_report.markdown(
        summary, skipped, seeds=args.seeds, command=command, minutes=(time.perf_counter() - t0) / 60
    )
    markdown += "".join(
        f"\nRuns made at commit {c}: {', '.join(sorted(names))}.\n" for c, names in sorted(codes.items())
    )
    (args.out / "pareto.md").write_text(markdown)
    (args.out / "summary.json").write_text(json.dumps(dataclasses.asdict(summary), indent=1))
    print(markdown)
    print(f"plot: {args.out / 'pareto.png'}   table: {args.out / 'pareto.md'}")


if __name__ == "__main__":
    main()
