"""The processes of one training run: which one this is, and the two things they do together besides DeepSpeed's
gradient averaging, rank 0 acting for all, a sum over all and waiting for all.

One process (no `--deepspeed`): rank 0 of 1, and both are plain calls. Several (`deepspeed`, `torchrun`, launch/):
DeepSpeed's process group, NCCL on GPUs and gloo on CPUs. NCCL moves only CUDA tensors, so every collective here
runs on this rank's GPU, which is chosen before the first one (creating the group sends nothing): a collective
before `torch.cuda.set_device` would put every rank of a node on GPU 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from fair.errors import FairError


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    zero: bool = False  # DeepSpeed ZeRO engine in use
    device: str = "cpu"  # where this rank's collectives run: its GPU under NCCL, the CPU under gloo

    def on_rank_zero(self, action) -> None:
        """Run `action` on rank 0 only; if it fails, every rank raises its error together (a rank left
        behind would wait in the next collective for ever)."""
        error = None
        if self.rank == 0:
            try:
                action()
            except FairError as e:
                error = str(e)
        if self.world > 1:
            box = [error]
            torch.distributed.broadcast_object_list(box, src=0, device=torch.device(self.device))
            error = box[0]
        if error:
            raise FairError(error)

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def all_sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()


def setup_distributed(deepspeed_config: str | None) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if deepspeed_config is None:
        if world > 1:
            raise FairError("training in several processes needs a ZeRO config: --deepspeed configs/deepspeed/zero2.json")
        return Dist()
    import deepspeed

    gpu = torch.cuda.is_available()
    deepspeed.init_distributed(dist_backend="nccl" if gpu else "gloo")  # sets LOCAL_RANK under mpirun and srun
    device = "cpu"
    if gpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        device = f"cuda:{torch.cuda.current_device()}"
    return Dist(torch.distributed.get_rank(), torch.distributed.get_world_size(), zero=True, device=device)
