"""Two Ray nodes on this machine: a head labelled pool=actors and a second node labelled pool=trainers.

A job sent with `ray job submit` places its sampler actors on the first and its two learner ranks on the second
through resources.actor_node_labels / learner_node_labels. Where each process ran is read back from Ray's own
state API (`ray list actors` / `ray list nodes`), not from the config; that weights crossed the node boundary
is read from the job's records: every step's samples were drawn with the version pushed after the step before.
Each node is started in its own session and stopped by signalling its process group: `ray stop` would stop
every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from cluster.outputs.episodes import read_episodes
from cluster.runtime.ports import free_port
from monitoring.local_ray_head import RAY, LocalRayHead
from tests.integration.job_submit import submit_smoke_job, venv_head

ROOT = Path(__file__).resolve().parents[2]


class SecondNode:
    """`ray start --address HEAD --block` on free ports with its own temp dir and labels."""

    def __init__(self, head: LocalRayHead, num_cpus: int, labels: str):
        self.temp_dir = Path(tempfile.mkdtemp(prefix="jnode-", dir="/tmp"))
        self.log = self.temp_dir / "ray_start.log"
        ports = (
            f"--{flag}={free_port()}"
            for flag in (
                "node-manager-port",
                "object-manager-port",
                "metrics-export-port",
                "dashboard-agent-listen-port",
                "dashboard-agent-grpc-port",
                "runtime-env-agent-port",
            )
        )
        cmd = [
            str(RAY),
            "start",
            "--block",
            f"--address=127.0.0.1:{head.port}",
            "--num-cpus",
            str(num_cpus),
            "--labels",
            labels,
            "--temp-dir",
            str(self.temp_dir / "ray"),
            "--disable-usage-stats",
            *ports,
        ]
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                cmd, env=head.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def ray_list(head: LocalRayHead, what: str) -> list[dict]:
    out = subprocess.run(
        [str(RAY), "list", what, "--address", head.dashboard_url, "--format", "json", "--detail", "--limit", "1000"],
        env=head.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)


def wait_for_nodes(head: LocalRayHead, count: int, timeout_s: float = 90) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        alive = [n for n in ray_list(head, "nodes") if n["state"] == "ALIVE"]
        if len(alive) >= count or time.monotonic() > deadline:
            return alive
        time.sleep(1)


@pytest.mark.timeout(600)
def test_actors_and_learner_on_the_nodes_their_labels_name(tiny_dir, tmp_path):
    head = venv_head(num_cpus=3, extra_args=("--labels", "pool=actors"))
    head.start()
    second = None
    try:
        second = SecondNode(head, num_cpus=2, labels="pool=trainers")
        nodes = wait_for_nodes(head, 2)
        assert len(nodes) == 2, f"second node did not join:\n{second.log.read_text()[-3000:]}"
        node_of = {n["labels"].get("pool"): n["node_id"] for n in nodes}
        assert set(node_of) >= {"actors", "trainers"}, [n["labels"] for n in nodes]

        overrides = [
            f"models.policy={tiny_dir / 'policy'}",
            f"reward.path_or_name={tiny_dir / 'reward'}",
            "run.run_dir=runs/two_nodes",
            "run.steps=2",
            "run.checkpoint_every=0",
            f"reward.http_port={free_port()}",
            "run.progress=false",
            "run.show_samples=0",
            "resources.learner_ranks=2",
            "resources.actor_node_labels={pool: actors}",
            "resources.learner_node_labels={pool: trainers}",
        ]
        t0 = time.time()
        log = submit_smoke_job(head, tmp_path, overrides, timeout_s=480)
        assert "no live Ray node has the labels" not in log, log[-4000:]  # the job saw both nodes' labels
        print(f"two-node job: {time.time() - t0:.0f} s")

        # Where Ray ran them (its state API), by the names cluster/runtime/ray_system.py gives its actors.
        actors = [a for a in ray_list(head, "actors") if (a.get("name") or "").startswith("jbond-")]
        nodes_of = {
            kind: {a["node_id"] for a in actors if f"-{kind}-" in a["name"]} for kind in ("policy", "anchor", "learner")
        }
        assert sum("-learner-" in a["name"] for a in actors) == 2, [a["name"] for a in actors]
        assert nodes_of["policy"] == nodes_of["anchor"] == {node_of["actors"]}, (nodes_of, node_of)
        assert nodes_of["learner"] == {node_of["trainers"]}, (nodes_of, node_of)

        # Weights crossed from the trainers' node to the actors' node: each step sampled the version pushed
        # and confirmed after the previous one.
        run_dir = tmp_path / "runs" / "two_nodes"
        rows = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
        assert [(r["step"], r["sample_policy_version"], r["sample_anchor_version"]) for r in rows] == [
            (1, 0, 0),
            (2, 1, 1),
        ]
        episodes = read_episodes(run_dir / "episodes").to_pylist()
        assert {(e["train_step"], e["weights_version"]) for e in episodes} == {(1, 0), (2, 1)}
    finally:
        if second is not None:
            second.stop()
        head.stop()
        if second is not None:
            shutil.rmtree(second.temp_dir, ignore_errors=True)
