"""What an idle system costs a learner that shares its cores: a learner rank steps in a plain process of its own
(medium_random, plain torch, the naive loop's threads, fixed batches), first alone, then beside the full system
(two vLLM engines, the Serve reward service, an idle learner actor, Ray's daemons) up but idle. While it steps,
the system's Ray workers are frozen (SIGSTOP) and thawed (SIGCONT) in turn, in windows of WINDOW_S seconds.
Frozen workers take no CPU and wake no thread, so their windows show what the idle workers' background work costs.

Prints the median step of each window kind against the learner alone, and each system process's CPU while the
system was idle and thawed (as a share of one core). On this 2-core machine this cost is part of the learner's gap
to the naive loop in `python -m bench system`; a learner on a GPU of its own should not pay it (not measured here).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence

from bench import idle

ALONE_STEPS, WARMUP_STEPS = 6, 2
WINDOW_S, CYCLES = 25.0, 3
KINDS = ("system idle", "workers frozen")


def window_steps(steps: Sequence[tuple[float, float]], windows: Sequence[tuple[str, float, float]]) -> dict:
    """Step seconds by window kind: a step (its end time, its seconds) counts where it ran wholly inside a window
    (start, end), so no step that straddles a freeze or thaw is counted."""
    out: dict[str, list[float]] = defaultdict(list)
    for kind, start, end in windows:
        out[kind] += [dt for t, dt in steps if t - dt >= start and t <= end]
    return dict(out)


def _learner_loop(policy: str) -> None:
    """The child: one learner rank stepping forever, printing 'end-time seconds' per step."""
    import torch

    from bench.bench_learner import _batch
    from cluster.runtime.learner_rank import LearnerRank
    from cluster.runtime.ports import free_port

    job = _job(policy)
    rank = LearnerRank(job, policy, 0, 1, "127.0.0.1", free_port(), threads=torch.get_num_threads())
    for s in range(sys.maxsize):
        t0 = time.perf_counter()
        rank.step(_batch(s % 4))
        print(f"{time.time():.3f} {time.perf_counter() - t0:.4f}", flush=True)


def _job(policy: str):
    from bench import bench_system
    from demo.tiny import build

    job = bench_system.job_config(policy, build(bench_system.ROOT / "artifacts" / "tiny") / "reward", 1, 1)
    return dataclasses.replace(job, learner=dataclasses.replace(job.learner, zero_stage=0))


class _Steps:
    """The learner child and the step lines it printed so far (read after the windows: the pipe holds them)."""

    def __init__(self, policy: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.bench_background", "--learner", policy], stdout=subprocess.PIPE, text=True
        )
        self.seen: list[tuple[float, float]] = []

    def wait_for(self, n: int) -> None:
        while len(self.seen) < n:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the learner child exited ({self.proc.wait()}) after {len(self.seen)} steps")
            try:
                t, dt = map(float, line.split())
            except ValueError:  # a library's own line on stdout, not a step
                continue
            self.seen.append((t, dt))

    def drain_until(self, t_end: float) -> None:
        """Read steps until one ends after t_end (the child steps every few seconds)."""
        while not self.seen or self.seen[-1][0] <= t_end:
            self.wait_for(len(self.seen) + 1)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _signal_all(pids: Sequence[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def process_name(p) -> str:
    """ray::VllmSampler, raylet, gcs_server, dashboard.py, ray-dashboard-NodeHead-0, cluster.main, ...: Ray's
    process title, or the program's (a Python daemon's script, the module of `python -m`)."""
    args = p.cmdline() or [p.name()]
    if args[0].startswith("ray"):
        return args[0].split()[0]
    if "-m" in args[1:-1]:
        return args[args.index("-m") + 1]
    return next((os.path.basename(a) for a in args[1:] if a.endswith(".py")), os.path.basename(args[0]))


def _labelled(procs) -> list[tuple[object, str]]:
    """Each process still running with its name, suffixed with how many share it ('ray::VllmSampler x2')."""
    import psutil

    named = []
    for p in procs:
        try:
            named.append((p, process_name(p)))
        except psutil.Error:  # exited since it was listed
            pass
    return list(zip([p for p, _ in named], with_counts([name for _, name in named]), strict=True))


def with_counts(names: Sequence[str]) -> list[str]:
    """Each name, suffixed with how many share it where more than one does ('ray::VllmSampler x2')."""
    count = Counter(names)
    return [name if count[name] == 1 else f"{name} x{count[name]}" for name in names]


def _cpu_seconds(procs: list[tuple[object, str]]) -> dict[str, float]:
    """CPU seconds so far of the processes, summed by label."""
    import psutil

    out: dict[str, float] = defaultdict(float)
    for p, label in procs:
        try:
            t = p.cpu_times()
        except psutil.Error:  # a process that exited counts nothing
            continue
        out[label] += t.user + t.system
    return dict(out)


def _windows(steps: _Steps, workers: list[int], procs) -> tuple[list, dict[str, float]]:
    """CYCLES x the window kinds in turn; returns the windows and the system's CPU share while idle and thawed."""
    windows, idle_cpu, idle_s = [], defaultdict(float), 0.0
    for _ in range(CYCLES):
        for kind in KINDS:
            frozen = workers if kind == "workers frozen" else []
            _signal_all(frozen, signal.SIGSTOP)
            before, t0 = _cpu_seconds(procs), time.time()
            time.sleep(WINDOW_S)
            t1 = time.time()
            if not frozen:
                after = _cpu_seconds(procs)
                for name, s in after.items():
                    idle_cpu[name] += s - before.get(name, 0.0)
                idle_s += t1 - t0
            _signal_all(frozen, signal.SIGCONT)
            windows.append((kind, t0, t1))
    steps.drain_until(windows[-1][2])
    return windows, {name: s / idle_s for name, s in idle_cpu.items()}


def main() -> None:
    import psutil
    import ray

    from bench import bench_system
    from cluster.runtime.ray_system import init_ray, start_system

    warning = idle.wait_for_idle()
    policy = str(bench_system.policy_dir("medium_random"))
    steps = _Steps(policy)
    system = None
    try:
        steps.wait_for(WARMUP_STEPS + ALONE_STEPS)
        alone = statistics.median(dt for _, dt in steps.seen[WARMUP_STEPS:])
        job = _job(policy)
        # The child pauses while the system starts: Ray's workers run at nice 15, and beside a busy learner at
        # nice 0 the start takes minutes instead of seconds. Steps around the pause are in no window.
        steps.proc.send_signal(signal.SIGSTOP)
        try:
            init_ray(job)
            system = start_system(job)
            time.sleep(5)  # the engines' and replica's first seconds after their constructors
        finally:
            steps.proc.send_signal(signal.SIGCONT)
        procs = _labelled([p for p in psutil.Process().children(recursive=True) if p.pid != steps.proc.pid])
        workers = [p.pid for p, label in procs if label.startswith("ray::")]
        try:
            windows, shares = _windows(steps, workers, procs)
        finally:
            _signal_all(workers, signal.SIGCONT)
        by_kind = window_steps(steps.seen, windows)
    finally:
        steps.close()
        if system is not None:
            system.shutdown()
            ray.shutdown()
    _report(alone, by_kind, shares, len(workers), warning)


def _report(alone: float, by_kind: dict, shares: dict[str, float], n_workers: int, warning: str | None) -> None:
    print(
        f"learner step beside an idle system (medium_random, plain torch, {CYCLES} x {len(KINDS)} windows of "
        f"{WINDOW_S:.0f} s; {n_workers} Ray workers frozen in turn)"
    )
    print(f"  {'alone':24s} {alone:6.2f} s/step  (median of {ALONE_STEPS})")
    for kind in KINDS:
        seconds = by_kind.get(kind, [])
        if not seconds:
            print(f"  {kind:24s} no whole step inside its windows")
            continue
        m = statistics.median(seconds)
        print(f"  {kind:24s} {m:6.2f} s/step  / alone {m / alone:.2f}x  (median of {len(seconds)})")
    print(f"  the idle system's CPU, thawed: {100 * sum(shares.values()):.1f} % of one core in all; the largest:")
    for name, share in sorted(shares.items(), key=lambda kv: -kv[1])[:6]:
        print(f"    {100 * share:5.1f} %  {name}")
    if warning:
        print(warning)
    for kind in KINDS:
        if len(by_kind.get(kind, [])) > 1 and (w := idle.uneven(by_kind[kind], kind)):
            print(w)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--learner"]:
        _learner_loop(sys.argv[2])
    else:
        main()
