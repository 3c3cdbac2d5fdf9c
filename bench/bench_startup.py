"""Start-up of the default job (`make run`, configs/local.yaml): how long its system takes to come up, when each
part was up, and the CPU-seconds every process spent meanwhile, over RUNS starts one after another.

Each run is the job itself in a subprocess (one training step), so what is timed is what a user's start pays. The
job prints its own times ("system up in", "up after": seconds from the start of start_system,
cluster/runtime/ray_system.py). This bench samples the CPU time of the job's processes (the driver and everything
under it: Ray's daemons, its workers) every SAMPLE_S. The "run.mode" line, printed once Ray is up and before any
role starts, opens the window and the "up after" line closes it; the difference is each process's CPU-seconds in
between, summed by Ray's process title. The start is CPU-bound where the cores are few: the window's CPU-seconds
over the cores is the floor of its wall time.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict, deque
from pathlib import Path

from bench import idle
from bench.bench_background import process_name, with_counts

ROOT = Path(__file__).resolve().parents[1]
RUNS = 3
SAMPLE_S = 0.2


class _CpuSampler:
    """The latest CPU-seconds and title of every process under `root` (itself included), sampled on a thread: a
    process that exits keeps its last sample."""

    def __init__(self, root: int):
        import psutil

        self._root = psutil.Process(root)
        self.latest: dict[int, tuple[float, str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self._root, *self._root.children(recursive=True)]
            except psutil.Error:  # the job exited
                return
            for p in procs:
                try:
                    t = p.cpu_times()
                    self.latest[p.pid] = (t.user + t.system, process_name(p))
                except psutil.Error:  # exited since it was listed
                    pass
            time.sleep(SAMPLE_S)

    def snapshot(self) -> dict[int, tuple[float, str]]:
        return dict(self.latest)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def window_cpu(start: dict[int, tuple[float, str]], end: dict[int, tuple[float, str]]) -> dict[str, float]:
    """CPU-seconds each process spent between two snapshots, summed by its title at the end ('ray::X x2' where
    two processes share it); a process that started in between counts from zero."""
    pids = list(end)
    out: dict[str, float] = defaultdict(float)
    for pid, label in zip(pids, with_counts([end[pid][1] for pid in pids]), strict=True):
        out[label] += end[pid][0] - start.get(pid, (0.0, ""))[0]
    return dict(out)


def _one_start(run_dir: Path) -> tuple[float, str, dict[str, float]]:
    """The job's 'system up' seconds, its 'up after' line and the CPU-seconds by process over the start."""
    from cluster.runtime.samplers import CPU_SAMPLER_ENV

    cmd = [sys.executable, "-m", "cluster.main", "--config", "configs/local.yaml"]
    cmd += ["--set", f"run.run_dir={run_dir}", "--set", "run.steps=1"]
    # what the Makefile's CPU targets export (a value the caller set wins), so a start by hand is `make run`'s
    env = {**os.environ, **{k: os.environ.get(k, v) for k, v in CPU_SAMPLER_ENV.items()}}
    job = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler, start, up, parts, cpu = _CpuSampler(job.pid), None, None, "", {}
    tail: deque[str] = deque(maxlen=20)  # what the job said last, for the error if it fails
    assert job.stdout is not None
    for line in job.stdout:
        tail.append(line)
        if line.startswith("run.mode"):
            time.sleep(SAMPLE_S)  # a fresh sample, taken after the line
            start = sampler.snapshot()
        elif m := re.match(r"system up in ([\d.]+) s", line):
            up = float(m.group(1))
        elif line.strip().startswith("up after:") and start is not None:
            time.sleep(SAMPLE_S)
            cpu, parts = window_cpu(start, sampler.snapshot()), line.strip()
    sampler.close()
    if job.wait() != 0 or up is None or not cpu:
        raise RuntimeError(
            f"the default job failed or printed no start-up times (exit {job.returncode}); its last lines:\n"
            + "".join(tail)
        )
    return up, parts, cpu


def main() -> None:
    warning = idle.wait_for_idle()
    cores = len(os.sched_getaffinity(0))
    ups, cpus = [], []
    print(f"the default job's start-up (configs/local.yaml), {RUNS} runs one after another:", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(RUNS):
            up, parts, cpu = _one_start(Path(tmp) / f"run{i}")
            ups.append(up)
            cpus.append(cpu)
            print(f"  run {i + 1}: system up in {up:.1f} s; {parts}", flush=True)
    medians = {n: statistics.median(c.get(n, 0.0) for c in cpus) for n in {n for cpu in cpus for n in cpu}}
    totals = [sum(cpu.values()) for cpu in cpus]
    print(f"CPU-seconds from Ray up to the system up, by process (median of {RUNS} runs):", flush=True)
    for name, seconds in sorted(medians.items(), key=lambda kv: -kv[1]):
        if seconds >= 0.05:
            print(f"  {name:42s} {seconds:6.2f}", flush=True)
    total, wall = statistics.median(totals), statistics.median(ups)
    print(
        f"  {'total':42s} {total:6.2f}  over {wall:.1f} s of start-up on {cores} cores: {total / wall:.2f} cores busy; "
        f"system up {min(ups):.1f}-{max(ups):.1f} s",
        flush=True,
    )
    for line in (warning, idle.uneven(ups, "the start-up times'")):
        if line:
            print(line, flush=True)


if __name__ == "__main__":
    main()
