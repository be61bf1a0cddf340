"""Several processes embedding one dataset: who am I, a barrier, and my share of the rows.

Layer: run.

clipfair uses PyTorch's own launcher and SLURM's, not a scheduler of its own:

* ``torchrun --nproc_per_node=N -m clipfair run ...`` sets ``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
* ``srun -n N clipfair run ...`` (or a submitit job with several tasks) sets
  ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS``, ``SLURM_LOCALID`` and ``SLURM_STEP_NODELIST``.
  ``SLURM_NTASKS`` alone is not used: a batch script of a 4-task job sees it too, while only
  one process runs, and a barrier would wait forever.

With one process (the default) nothing here touches ``torch.distributed``. With more, the
process group (gloo on CPU, NCCL when CUDA is available) is created once per process and is
used only for a barrier: the embeddings themselves travel through the shared
content-addressed cache (:mod:`clipfair.run.cache`).
"""

from __future__ import annotations

import atexit
import logging
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Mapping

log = logging.getLogger(__name__)

__all__ = ["DistributedError", "Dist", "from_env", "first_host", "shard_indices", "choose_backend", "setup",
           "barrier"]


class DistributedError(RuntimeError):
    """A distributed run that cannot work as configured (e.g. no shared cache)."""


@dataclass(frozen=True)
class Dist:
    """This process's place among ``world_size`` processes (``source``: torchrun, slurm or none)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    source: str = "none"
    local_world_size: int = 1  # processes on this node

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def describe(self) -> dict[str, object]:
        return {"rank": self.rank, "world_size": self.world_size, "local_rank": self.local_rank,
                "launcher": self.source}


def _int(env: Mapping[str, str], name: str) -> int:
    value = env[name]
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"environment variable {name}={value!r} is not an integer") from None


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``gpu[03-05,9],cpu1`` -> ``gpu03``."""
    m = re.match(r"\s*([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
    if not m or not m.group(1):
        raise DistributedError(f"cannot read the SLURM node list {nodelist!r}; set MASTER_ADDR")
    prefix, ranges = m.group(1), m.group(2)
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def from_env(env: Mapping[str, str] | None = None) -> Dist:
    """Rank and world size from torchrun's variables, else SLURM's (an srun step), else one
    process. A rank outside ``0 .. world size - 1`` is refused (it would wait at the barrier)."""
    d = _from_env(os.environ if env is None else env)
    if d.world_size < 1 or not 0 <= d.rank < d.world_size:
        var = "RANK/WORLD_SIZE" if d.source == "torchrun" else "SLURM_PROCID/SLURM_STEP_NUM_TASKS"
        raise DistributedError(f"rank {d.rank} is not in a world of {d.world_size} processes ({var}); "
                               "a rank must be between 0 and the world size - 1: check the launcher's variables")
    return d


def _from_env(env: Mapping[str, str]) -> Dist:
    if "WORLD_SIZE" in env and "RANK" in env:
        return Dist(_int(env, "RANK"), _int(env, "WORLD_SIZE"), int(env.get("LOCAL_RANK", "0")),
                    env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", "29500")), "torchrun",
                    int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])))
    if "SLURM_PROCID" in env and "SLURM_STEP_NUM_TASKS" in env:
        world = _int(env, "SLURM_STEP_NUM_TASKS")
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1"
        addr = env.get("MASTER_ADDR") or first_host(nodes)
        # a port per job, so that two jobs sharing a node do not collide
        port = int(env["MASTER_PORT"]) if "MASTER_PORT" in env else \
            20000 + int(env.get("SLURM_JOB_ID", "0") or 0) % 20000
        # tasks per node, e.g. "4(x2)" or "4,3": the first node's count
        per_node = re.match(r"\d+", env.get("SLURM_STEP_TASKS_PER_NODE", "") or "")
        return Dist(_int(env, "SLURM_PROCID"), world, int(env.get("SLURM_LOCALID", "0")), addr, port, "slurm",
                    int(per_node.group()) if per_node else world)
    return Dist()


def shard_indices(n: int, rank: int, world_size: int, block: int) -> list[int]:
    """Rows of a dataset of ``n`` rows that ``rank`` of ``world_size`` embeds.

    Whole blocks of ``block`` consecutive rows go round-robin to the ranks (block ``b`` to rank
    ``b % world_size``): with ``block`` the batch size, every rank encodes exactly the batches a
    single process would, so the embeddings (and predictions) are identical to a one-process run.
    Every row belongs to exactly one rank.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size}")
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    return [i for b in range(rank, -(-n // block), world_size) for i in range(b * block, min(n, (b + 1) * block))]


_GROUP: dict[str, object] = {}


def choose_backend(dist: Dist, cuda_devices: int) -> str:
    """``auto``: NCCL when every process of a node has a GPU of its own, else gloo (CPU, or
    more processes than GPUs: NCCL refuses two ranks on one GPU). Only a barrier runs on it."""
    return "nccl" if 0 < dist.local_world_size <= cuda_devices else "gloo"


def setup(dist: Dist, timeout_min: float = 720.0, backend: str = "auto") -> None:
    """Create the process group once per process (no-op for one process). On CUDA machines
    each process first takes GPU ``local_rank`` (mod the GPUs it sees), so ``model.device=auto``
    puts the ranks of one node on different GPUs."""
    if not dist.enabled or _GROUP:
        return
    import torch
    import torch.distributed as td

    devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if devices:
        torch.cuda.set_device(dist.local_rank % devices)
    chosen = choose_backend(dist, devices) if backend == "auto" else backend
    log.info("rank %d of %d (%s): process group %s via %s:%d", dist.rank, dist.world_size, dist.source,
             chosen, dist.master_addr, dist.master_port)
    td.init_process_group(chosen, init_method=f"tcp://{dist.master_addr}:{dist.master_port}",
                          rank=dist.rank, world_size=dist.world_size, timeout=timedelta(minutes=timeout_min))
    _GROUP.update(backend=chosen, dist=dist)
    atexit.register(_teardown)


def _teardown() -> None:
    import torch.distributed as td

    if td.is_available() and td.is_initialized():
        td.destroy_process_group()
    _GROUP.clear()


def barrier(info: Any = None) -> list[Any]:
    """Wait until every process got here; returns each rank's ``info``, in rank order
    (``[info]`` without a process group)."""
    if not _GROUP:
        return [info]
    import torch.distributed as td

    out: list[Any] = [None] * td.get_world_size()
    td.all_gather_object(out, info)  # a collective: no rank passes before all arrived
    return out
