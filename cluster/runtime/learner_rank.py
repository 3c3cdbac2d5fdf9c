"""One data-parallel learner rank as a Ray actor (what RayLearnerGroup, in learner_group.py, drives).

Its own module because a Ray actor's process imports the module of its class: this one imports the learner and the
weight transports, not the driver's side (the sampler fleet, the reward service's client, Serve), which would cost
every rank a second of start-up CPU for nothing."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from actors.weight_broadcast import GroupAddress, WeightGroup
from actors.weight_flat import FlatUpdate
from bond.records import Role
from cluster.config.job import JobConfig
from cluster.runtime.ports import node_port
from learner.learner import Learner


class LearnerRank(Learner):
    """One data-parallel learner rank as a Ray actor: the learner/ class plus what the driver needs remotely."""

    def __init__(
        self,
        job: JobConfig,
        reference: str,
        rank: int,
        world_size: int,
        master_addr: str,
        master_port: int,
        threads: int | None = None,
    ):
        if threads is not None:  # Ray's default for a fractional num_cpus is one thread (cluster/runtime/threads.py)
            torch.set_num_threads(threads)
        super().__init__(
            reference,
            job.algorithm,
            job.learner,
            rank=rank,
            world_size=world_size,
            master_addr=master_addr,
            master_port=master_port,
        )
        self._export_bytes = 0
        self._weight_groups: dict[Role, WeightGroup] = {}  # rank 0 only: the sender of each role's group

    def weights(self, role: Role) -> Iterator[FlatUpdate]:
        """Every rank walks the buckets (gathers are collective); only rank 0 yields them into the object store,
        each as one flat buffer that every reader maps without a copy (actors/weight_flat.py). The buckets' memory is
        reused from push to push: Ray copies each into the object store as it is yielded."""
        self._export_bytes = 0
        for update in super().weights(role, reuse=True):
            self._export_bytes += update.num_bytes
            if self.rank == 0:
                yield FlatUpdate.pack(update)

    def last_export_bytes(self) -> int:
        return self._export_bytes

    def model_bytes(self) -> int:  # a method: a Ray actor's properties cannot be read remotely
        return self._export.model_bytes

    @staticmethod
    def threads() -> int:
        """torch intra-op threads of this rank (what resources.threads gave it)."""
        return torch.get_num_threads()

    @staticmethod
    def weight_group_port() -> tuple[str, int]:
        return node_port()

    def join_weight_group(self, role: Role, address: GroupAddress) -> None:
        """Rank 0 hosts `role`'s weight group (its TCPStore) as group rank 0; blocks until every actor joined."""
        self._weight_groups[role] = WeightGroup(address, 0, self.device)

    def send_weights(self, role: Role) -> tuple[int, int]:
        """Every rank walks the buckets (gathers are collective); rank 0 broadcasts them. Returns (buckets, bytes)."""
        group = self._weight_groups.get(role) if self.rank == 0 else None
        if self.rank == 0 and group is None:
            raise RuntimeError(f"send_weights({role}) before join_weight_group")
        buckets = num_bytes = 0
        for update in super().weights(role, reuse=True):  # each bucket is broadcast before the next is filled
            if group is not None:
                group.send(update)
            buckets, num_bytes = buckets + 1, num_bytes + update.num_bytes
        return buckets, num_bytes
