"""The process group of a run that torchrun started (DDP): who this process is, and what the ranks agree on.

In one process (no torchrun) every function here answers for a world of one and touches nothing, so
the loop reads the same with one process or many. The process group is handled here alone (cli/launch.py
starts the processes); torch is imported inside the functions, so that the CLI can read TORCHRUN_ENV
before anything imports torch (`--cfg job` stays fast).
"""

from __future__ import annotations

import os

# The variables torchrun sets in every process it starts (torch.distributed.run's documentation).
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# Set by `trainkit train trainer.devices=N` for the processes it starts: the launcher's pid. That
# launcher checked the config, and it holds the run folder's lock for the whole run.
LAUNCHER_PID = "TRAINKIT_LAUNCHER_PID"


def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in TORCHRUN_ENV)


def started_by_trainkit() -> bool:
    """This process is a rank that `trainkit train trainer.devices=N` started (its parent is that launcher)."""
    return launched_by_torchrun() and os.environ.get(LAUNCHER_PID) == str(os.getppid())


def init() -> None:
    """Join the process group torchrun set up: NCCL for CUDA tensors, gloo for CPU ones."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized() or not launched_by_torchrun():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))  # "cuda" is then this rank's own GPU
        backend = "cpu:gloo,cuda:nccl"  # gloo as well: the stop flags and the objects sent are CPU tensors
    else:
        backend = "gloo"  # "cuda:nccl" raises on a machine without GPUs
    dist.init_process_group(backend=backend)


def close() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0


def world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_initialized() else 1


def is_rank_zero() -> bool:
    return rank() == 0


def all_sum(values: list[float]) -> list[float]:
    """Each value summed over the ranks (float64: counts stay exact)."""
    return all_reduce(values, "SUM")


def all_max(values: list[float]) -> list[float]:
    """Each value's maximum over the ranks: a flag raised on any rank is raised on all."""
    return all_reduce(values, "MAX")


def all_reduce(values: list[float], op: str) -> list[float]:
    if world() == 1:
        return list(values)
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=getattr(dist.ReduceOp, op))
    return t.tolist()


def from_rank_zero(make):
    """`make()` called on rank 0 alone, its result sent to every rank: a checkpoint is read from rank 0's
    disk, so the other machines need no shared file system."""
    if world() == 1:
        return make()
    import torch.distributed as dist

    box = [make() if is_rank_zero() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def share_buffers_of_rank_zero(module) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) copied to every rank. During training each rank
    updates them from its own share of the batch; before an evaluation all ranks take rank 0's, so the
    figures summed over the ranks are those of the one model rank 0 saves."""
    if world() == 1:
        return
    import torch.distributed as dist

    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)


def average_batch_norm_statistics(module) -> None:
    """Each BatchNorm layer's running mean and variance averaged over the ranks, each having measured them on
    its own share of the data (update_bn): the statistics of the whole training set, up to how it was split."""
    if world() == 1:
        return
    import torch.distributed as dist
    from torch.nn.modules.batchnorm import _BatchNorm

    for layer in module.modules():
        if isinstance(layer, _BatchNorm) and layer.running_mean is not None:
            for statistic in (layer.running_mean, layer.running_var):
                dist.all_reduce(statistic.data)
                statistic.data /= world()


def wrap(model):
    """DDP around `model` for training: its constructor copies rank 0's weights to every rank, and each
    backward averages the gradients over the ranks. The bare model stays what is evaluated and saved."""
    if world() == 1:
        return model
    import warnings

    import torch
    from torch.nn.parallel import DistributedDataParallel

    # trainkit's uint8 NHWC batches give conv weight gradients channels_last strides; DDP then copies each
    # into its contiguous bucket (correct, a copy per step) and warns on every rank at the first backward.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    on_cuda = next(model.parameters()).is_cuda
    return DistributedDataParallel(model, device_ids=[torch.cuda.current_device()] if on_cuda else None)


def sync_batch_norm(model):
    """trainer.sync_bn: BatchNorm layers normalise over the global batch (same parameters and buffers,
    so its checkpoints load into a plain BatchNorm model)."""
    from torch.nn import SyncBatchNorm

    return SyncBatchNorm.convert_sync_batchnorm(model) if world() > 1 else model
