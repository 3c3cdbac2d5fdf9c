"""Soak: a long pipelined run of the default job, watching every process's memory for leaks.

    python -m bench soak [--minutes 20] [--interval-s 30] [--out runs/soak]     (or `make soak`)

Runs configs/local.yaml in pipelined mode with no step limit, and every interval samples the RSS of the
driver and of every live Ray actor (psutil, by PID: samplers, learner, reward replica, Serve's controller
and proxy) and the object store's use (Ray's memory summary). After `--minutes` it stops the job the way a
preemption would (SIGTERM: checkpoint at the step boundary). Writes soak.csv and soak.png under --out and
prints, per process, the RSS growth from the end of warm-up (the first quarter of the run) to the end:
flat means within 10 %.
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import threading
import time
from pathlib import Path

import psutil

from cluster.runtime.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
FLAT = 0.10


def _processes() -> dict[str, int]:
    """name -> PID of the driver and of every live actor."""
    import ray
    from ray.util.state import list_actors

    found = {"driver": os.getpid()}
    for info in list_actors(
        address=ray.get_runtime_context().gcs_address,
        filters=[("state", "=", "ALIVE")],
        detail=True,
        raise_on_missing_output=False,
    ):
        if info.pid:
            found[info.name or info.class_name] = info.pid
    return found


def _object_store_mib() -> float:
    """Bytes of every object Ray holds, from its state API (a growing store is a leak)."""
    import ray
    from ray.util.state import list_objects

    objects = list_objects(
        address=ray.get_runtime_context().gcs_address, limit=1_000_000, raise_on_missing_output=False
    )
    return sum(o.object_size or 0 for o in objects) / 2**20


def _steps(run_dir: Path) -> int:
    path = run_dir / "stats.jsonl"
    return sum(1 for _ in path.open()) if path.exists() else 0


class Sampler(threading.Thread):
    def __init__(self, run_dir: Path, interval_s: float, minutes: float, rows: list[dict]):
        super().__init__(daemon=True)
        self.run_dir, self.interval_s, self.seconds, self.rows = run_dir, interval_s, minutes * 60, rows

    def run(self) -> None:
        t0 = time.monotonic()
        while True:
            elapsed = time.monotonic() - t0
            step = _steps(self.run_dir)
            for name, pid in _processes().items():
                try:
                    rss = psutil.Process(pid).memory_info().rss / 2**20
                except psutil.Error:  # the process ended between the listing and the read
                    continue
                self.rows.append({"seconds": round(elapsed), "step": step, "process": name, "rss_mib": round(rss, 1)})
            self.rows.append(
                {
                    "seconds": round(elapsed),
                    "step": step,
                    "process": "object_store",
                    "rss_mib": round(_object_store_mib(), 1),
                }
            )
            print(
                f"soak {elapsed / 60:5.1f} min, step {step}: "
                f"{sum(r['rss_mib'] for r in self.rows if r['seconds'] == round(elapsed)):.0f} MiB in all",
                flush=True,
            )
            if elapsed >= self.seconds:
                os.kill(os.getpid(), signal.SIGTERM)  # stop like a preemption: checkpoint at the step boundary
                return
            time.sleep(max(0.0, self.interval_s - (time.monotonic() - t0 - elapsed)))


def growth(rows: list[dict], warmup_s: float) -> dict[str, tuple[float, float, float]]:
    """process -> (RSS at the end of warm-up, RSS at the end, relative growth); processes seen throughout only."""
    by_process: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        by_process.setdefault(r["process"], []).append((r["seconds"], r["rss_mib"]))
    end = max(r["seconds"] for r in rows)
    out = {}
    for name, series in by_process.items():
        after = [(t, v) for t, v in series if t >= warmup_s]
        if len(after) < 2 or after[-1][0] < end:
            continue
        first, last = after[0][1], after[-1][1]
        out[name] = (first, last, (last - first) / first if first else 0.0 if last == first else float("inf"))
    return out


def plot(rows: list[dict], path: Path, warmup_s: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    for name in sorted({r["process"] for r in rows}):
        series = [(r["seconds"] / 60, r["rss_mib"]) for r in rows if r["process"] == name]
        ax.plot(*zip(*series, strict=True), marker=".", label=name.replace("SERVE_", "")[:40])
    ax.axvline(warmup_s / 60, color="grey", linestyle=":", label="end of warm-up")
    ax.set(xlabel="minutes", ylabel="MiB (RSS; object store: plasma use)", title="soak: memory per process")
    ax.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    import ray

    from cluster.config import loading
    from cluster.config.job import JobConfig
    from cluster.main import run
    from cluster.runtime.ray_system import init_ray
    from cluster.training.preemption import Preempted

    parser = argparse.ArgumentParser(
        prog="python -m bench soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--interval-s", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "soak")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    data = loading.load_document(ROOT / "configs" / "local.yaml")
    for assignment in (
        "run.mode=pipelined",
        "run.steps=1000000",
        "run.checkpoint_every=0",
        "run.progress=false",
        "run.show_samples=0",
        f"run.run_dir={args.out / 'run'}",
        f"reward.http_port={free_port()}",
    ):
        loading.apply_override(data, assignment)
    job = loading.build(JobConfig, data)
    init_ray(job)
    rows: list[dict] = []
    t0 = time.monotonic()
    try:
        Sampler(job.run.run_dir, args.interval_s, args.minutes, rows).start()
        run(job)
    except Preempted as stopped:
        print(stopped, flush=True)
    finally:
        ray.shutdown()
    minutes = (time.monotonic() - t0) / 60
    with (args.out / "soak.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["seconds", "step", "process", "rss_mib"])
        writer.writeheader()
        writer.writerows(rows)
    warmup_s = args.minutes * 60 / 4
    plot(rows, args.out / "soak.png", warmup_s)
    result = growth(rows, warmup_s)
    print(
        f"\nsoak: {minutes:.1f} min, {max(r['step'] for r in rows)} steps, sampled every {args.interval_s:.0f} s; "
        f"growth after warm-up ({warmup_s / 60:.1f} min):"
    )
    for name, (first, last, rel) in sorted(result.items()):
        print(f"  {name[:48]:48s} {first:8.1f} -> {last:8.1f} MiB  {rel:+7.1%}")
    store = [r["rss_mib"] for r in rows if r["process"] == "object_store"]
    print(f"  object store: peak {max(store):.1f} MiB of plasma in use at a sample")
    worst = max((rel for name, (_, _, rel) in result.items() if name != "object_store"), default=float("nan"))
    verdict = "FLAT" if worst <= FLAT else "GROWING"
    print(
        f"RSS {verdict}: worst process grew {worst:+.1%} after warm-up (flat: within {FLAT:.0%}); "
        f"{args.out / 'soak.csv'}, {args.out / 'soak.png'}"
    )


if __name__ == "__main__":
    main()
