"""Several processes of one launch (``accelerate launch``, ``torchrun``): who am I, my share, gather.

Outside a launcher every function here answers for one process (rank 0 of 1) and touches no
process group, so single-process code paths pay nothing. Under a launcher the process group
is started through accelerate's ``PartialState`` (the state ``Accelerator`` shares): gloo on
CPU, NCCL on CUDA.
"""

from __future__ import annotations

import os
from typing import Any


class DeviceError(ValueError):
    """A --device that names no device, or CUDA on a machine without it."""


def resolve_device(device: str) -> str:
    """``device`` checked ("auto": cuda if available, else cpu): one line for a misspelt name or
    CUDA asked for where torch sees none, not a torch traceback at the first tensor."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(device)
    except RuntimeError:
        raise DeviceError(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"--device {device} asked for, but torch sees no CUDA device; use --device cpu")
    return device


def launch_size() -> int:
    """The number of processes of this launch, from the launcher's environment before any process
    group exists (1 outside a launcher, or where WORLD_SIZE is not a number)."""
    try:
        return max(int(os.environ.get("WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1


def launched() -> bool:
    """True under ``torchrun``/``accelerate launch`` with several processes, or ``accelerate launch``."""
    return launch_size() > 1 or "ACCELERATE_MIXED_PRECISION" in os.environ


def main_process() -> bool:
    """Whether this is the launch's main process (or the only one), known from the launcher's
    environment before any process group exists."""
    return int(os.environ.get("RANK", "0")) == 0


def accelerate_cpu(device: str | None) -> bool:
    """accelerate's ``cpu=`` flag for ``device``: accelerate picks gloo on CPU only when told
    (torchrun sets no flag for it)."""
    import torch

    return device == "cpu" or not torch.cuda.is_available()


def _state(device: str | None) -> Any:
    from accelerate import PartialState

    return PartialState(cpu=accelerate_cpu(device))


def world(device: str | None = None) -> tuple[int, int]:
    """(rank, number of processes): ``(0, 1)`` unless launched; under a launcher this starts
    the process group (gloo when ``device`` is ``"cpu"`` or there is no CUDA, else NCCL)."""
    if not launched():
        return 0, 1
    state = _state(device)
    return state.process_index, state.num_processes


def process_device(device: str) -> str:
    """``device`` for this process: under a multi-process launch a bare ``"cuda"`` becomes this
    process's GPU (``cuda:LOCAL_RANK``); anything else is kept."""
    if device != "cuda" or world(device)[1] == 1:
        return device
    return str(_state(device).device)


def shard(n: int, rank: int, size: int) -> slice:
    """The contiguous part of ``range(n)`` that process ``rank`` of ``size`` takes (sizes differ by
    at most one; in rank order the parts cover ``range(n)`` exactly once)."""
    return slice(n * rank // size, n * (rank + 1) // size)


def _process_group() -> Any:
    """``torch.distributed`` where this launch's process group is up, else None (one process, or
    before the group starts): the collectives below then act on this process alone."""
    if not launched():
        return None
    import torch.distributed as dist

    return dist if dist.is_initialized() else None


def gather(value: Any) -> list[Any] | None:
    """``value`` of every process in rank order, on the main process; ``None`` on the others
    (``[value]`` in one process). Values travel pickled: for results, not for hot loops."""
    dist = _process_group()
    if dist is None:
        return [value]
    values: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(value, values, dst=0)
    return values


def all_gather(value: Any) -> list[Any]:
    """``value`` of every process in rank order, on every process (``[value]`` in one process):
    for outcomes every process must act on alike, such as one process's failure."""
    dist = _process_group()
    if dist is None:
        return [value]
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def mean_over_processes(value: Any) -> Any:
    """A tensor's mean over the processes of the launch (``value`` itself in one process): each
    process's loss is the mean over its share of the batch, so their mean is the whole batch's,
    the figure one process logs. One all-reduce: for log lines, not for every step."""
    dist = _process_group()
    if dist is None:
        return value
    total = value.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / dist.get_world_size()


def largest(values: list[float], device: Any = "cpu") -> list[float]:
    """Each entry's largest value over the processes of the launch, the same list on every process
    (``values`` as given in one process). One all-reduce and a host sync: for decisions every
    process must take at the same step (a time budget, a stop signal), not for every step."""
    dist = _process_group()
    if dist is None:
        return list(values)
    import torch

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def barrier() -> None:
    """Wait for every process of the launch (nothing in one process)."""
    dist = _process_group()
    if dist is not None:
        dist.barrier()


def finish() -> None:
    """Wait for every process, then close the process group: a process that exits with it open
    may abort (gloo's threads). Nothing in one process."""
    dist = _process_group()
    if dist is not None:
        dist.barrier()
        dist.destroy_process_group()


__all__ = [
    "launched", "accelerate_cpu", "world", "process_device", "shard", "gather", "all_gather", "barrier", "finish",
]  # fmt: skip
