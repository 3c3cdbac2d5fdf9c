"""Split vs colocated placement (resources.colocate): peak memory and step time of the same short job.

    python -m bench topology [--models tiny medium] [--steps 8] [--out runs/bench_topology]   (or `make topology`)

Each (model, mode) runs configs/smoke.yaml in sync mode, in-process (this script starts and stops Ray per run).
A thread samples the RSS of the driver and of every live Ray actor of the job (samplers, learner, reward
replica, Serve's controller and proxy) every 0.25 s; the figures are the peak of their sum over the run
and in the steady state (after the first step: vLLM zero-fills its KV cache at start-up, before a
colocated engine can give it back), shared pages counted once per process as `ps` does, and each role's
own peak. Step time is the median over the steps
after the first of sample + score + learn + sync. Split reserves cpus_per_actor for each actor and
cpus_per_learner for the rank; colocated reserves the rank's bundle only, shared by all of them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from pathlib import Path

import psutil

from cluster.runtime.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"tiny": "artifacts/tiny/policy", "medium": "artifacts/medium/policy"}
# Split: 1 core per actor and for the rank (3 reserved); colocated: one 2-core bundle for all three.
MODES = {
    "split": ["resources.cpus_per_actor=1", "resources.cpus_per_learner=1"],
    "colocated": ["resources.colocate=true", "resources.cpus_per_learner=2"],
}


def _role(name: str) -> str:
    for role in ("policy", "anchor", "learner"):
        if name.startswith("jbond-") and f"-{role}-" in name:
            return role
    return "other"  # reward replica, Serve controller and proxy, the driver


class MemoryWatch(threading.Thread):
    """Peaks of the summed RSS: over the whole run, and in the steady state (once the first step is logged)."""

    def __init__(self, stats: Path, interval_s: float = 0.25):
        super().__init__(daemon=True)
        self.stats, self.interval_s, self.stop = stats, interval_s, threading.Event()
        self.peak_total = self.peak_steady = 0.0
        self.peak_role: dict[str, float] = {}

    def run(self) -> None:
        import ray
        from ray.util.state import list_actors

        while not self.stop.is_set():
            pids = {os.getpid(): "other"}
            if ray.is_initialized():
                try:
                    for info in list_actors(
                        address=ray.get_runtime_context().gcs_address,
                        filters=[("state", "=", "ALIVE")],
                        raise_on_missing_output=False,
                    ):
                        if info.pid:
                            pids[info.pid] = _role(info.name or "")
                except Exception:  # noqa: BLE001 - Ray starting or shutting down: sample again next time
                    pass
            total, per_role = 0.0, {}
            for pid, role in pids.items():
                try:
                    rss = psutil.Process(pid).memory_info().rss / 2**20
                except psutil.Error:
                    continue
                total += rss
                per_role[role] = per_role.get(role, 0.0) + rss
            self.peak_total = max(self.peak_total, total)
            if self.stats.exists() and self.stats.stat().st_size:  # start-up is over: a step has been trained
                self.peak_steady = max(self.peak_steady, total)
            for role, rss in per_role.items():
                self.peak_role[role] = max(self.peak_role.get(role, 0.0), rss)
            time.sleep(self.interval_s)


def run_one(model: str, mode: str, steps: int, out: Path) -> dict:
    from cluster.main import parse_config, run

    run_dir = out / f"{model}-{mode}"
    args = ["--config", str(ROOT / "configs" / "smoke.yaml")]
    for o in [
        f"models.policy={MODELS[model]}",
        f"run.run_dir={run_dir}",
        f"run.steps={steps}",
        "run.checkpoint_every=0",
        "run.show_samples=0",
        "run.progress=false",
        "run.tensorboard=false",
        "algorithm.prompts_per_step=16",
        "learner.bucket_bytes=67108864",
        f"reward.http_port={free_port()}",
        *MODES[mode],
    ]:
        args += ["--set", o]
    job = parse_config(args)
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    watch = MemoryWatch(run_dir / "stats.jsonl")
    watch.start()
    t0 = time.perf_counter()
    try:
        run(job)
    finally:
        watch.stop.set()
        watch.join()
    rows = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    step_s = [sum(r["phase_seconds"].values()) for r in rows[1:]]
    phases = {p: statistics.median(r["phase_seconds"][p] for r in rows[1:]) for p in rows[0]["phase_seconds"]}
    res = job.resources
    reserved = res.learner_ranks * res.cpus_per_learner + (
        0 if res.colocate else (res.policy_actors + res.anchor_actors) * res.cpus_per_actor
    )
    return {
        "model": model,
        "mode": mode,
        "steps": len(rows),
        "reserved_cpus": reserved,
        "peak_total_mib": round(watch.peak_total),
        "peak_steady_mib": round(watch.peak_steady),
        "peak_mib": {k: round(v) for k, v in watch.peak_role.items()},
        "step_s": round(statistics.median(step_s), 3),
        "phase_s": {k: round(v, 3) for k, v in phases.items()},
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench topology", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["tiny"], choices=sorted(MODELS))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_topology")
    args = parser.parse_args(argv)
    os.chdir(ROOT)  # the job's relative paths (configs/, artifacts/)
    results = []
    for model in args.models:
        for mode in MODES:
            results.append(run_one(model, mode, args.steps, args.out))
            (args.out / "results.json").write_text(json.dumps(results, indent=1))  # kept if a later run fails
    print(
        f"\n{'model':8} {'mode':10} {'CPUs':>5} {'peak MiB':>9} {'steady':>7} {'policy':>7} {'anchor':>7} "
        f"{'learner':>7} {'s/step':>7}  sample / score / learn / sync s"
    )
    for r in results:
        p, ph = r["peak_mib"], r["phase_s"]
        print(
            f"{r['model']:8} {r['mode']:10} {r['reserved_cpus']:5.1f} {r['peak_total_mib']:9d} "
            f"{r['peak_steady_mib']:7d} "
            f"{p.get('policy', 0):7d} {p.get('anchor', 0):7d} {p.get('learner', 0):7d} {r['step_s']:7.2f}  "
            f"{ph['sample']:.2f} / {ph['score']:.2f} / {ph['learn']:.2f} / {ph['sync']:.2f}"
        )
    print(f"results: {args.out / 'results.json'}")
