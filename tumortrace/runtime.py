"""Runtime: which device, which precision, how many threads, which rank.

One place decides these for training (:mod:`tumortrace.train`), inference
(:mod:`tumortrace.infer`), scoring (:mod:`tumortrace.scoring`) and checkpoint loading
(:mod:`tumortrace.checkpoint`), so they cannot choose differently on the same machine:

* :func:`resolve_device`: ``"auto"`` is CUDA when torch sees a GPU, else the CPU; asking for
  ``"cuda"`` without one is an error that says so.
* :func:`native_bf16` / :func:`bf16_support`: bf16 only where the hardware computes it natively:
  CUDA's ``is_bf16_supported``; on a CPU oneDNN's bf16 support *and* AMX tiles or AVX512-BF16 (an
  AVX2 EPYC emulates bf16 at 1-2 GFLOP/s against about 170 in fp32, so fp32 is its fast path).
  ``TUMORTRACE_NATIVE_BF16=0`` (:data:`NATIVE_BF16_ENV`) makes it report False on any device, so a
  machine with native bf16 takes the path of an AVX2 CPU (to check that path and its time).
* :class:`Runtime` / :func:`fast_runtime` / :func:`setup_runtime`: training's device, autocast
  dtype, memory layout and ``torchrun`` rank.
* :func:`machine_facts`: what a benchmark records of the machine it ran on.
"""

from __future__ import annotations

import os
import platform
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tumortrace.errors import ConfigError

DEVICES: tuple[str, str, str] = ("auto", "cpu", "cuda")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device for ``"auto"``, ``"cpu"``, ``"cuda"`` (or ``"cuda:N"``, a torch.device).

    Raises:
        ConfigError: an unknown name, or ``"cuda"`` when torch sees no CUDA device.
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"Unknown device {device!r}; expected one of {list(DEVICES)}.") from err
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"Unknown device {device!r}; expected one of {list(DEVICES)}.")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"Device {device!r} was asked for but torch sees no CUDA device; use cpu or auto."
        )
    return dev


NATIVE_BF16_ENV = "TUMORTRACE_NATIVE_BF16"
"""Environment variable: ``0`` marks bf16 as not native on every device; unset, empty or ``auto``
detect it."""

EMULATED_ON_CPU = "emulated on this CPU"
"""The reason a CPU without AMX or AVX512-BF16 gives for not using bf16."""


@dataclass(frozen=True)
class Bf16Support:
    """Whether a device computes bf16 natively.

    Attributes:
        native: True when bf16 is computed natively (the fast path uses it).
        reason: None when native; else why not, in words a record and a page show as they are
            (e.g. :data:`EMULATED_ON_CPU`).
    """

    native: bool
    reason: str | None = None


def _native_bf16_override() -> bool:
    """True when :data:`NATIVE_BF16_ENV` is ``0``; False when unset, empty or ``auto``.

    Raises:
        ConfigError: any other value.
    """
    raw = os.environ.get(NATIVE_BF16_ENV, "")
    value = raw.strip().lower()
    if value not in ("", "auto", "0"):
        raise ConfigError(
            f"{NATIVE_BF16_ENV} must be '0' (bf16 not native) or 'auto' (detect), got {raw!r}."
        )
    return value == "0"


def _cpu_bf16_native() -> bool:
    """oneDNN's bf16 support and AMX tiles or AVX512-BF16 on this CPU."""
    try:
        if not (
            torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        ):
            return False
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def bf16_support(device: torch.device) -> Bf16Support:
    """Whether ``device`` computes bf16 natively, with the reason when it does not.

    Raises:
        ConfigError: :data:`NATIVE_BF16_ENV` set to something other than ``0`` or ``auto``.
    """
    if _native_bf16_override():
        return Bf16Support(False, f"marked not native by {NATIVE_BF16_ENV}=0")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Bf16Support(True)
        return Bf16Support(False, "not supported by this GPU")
    return Bf16Support(True) if _cpu_bf16_native() else Bf16Support(False, EMULATED_ON_CPU)


def native_bf16(device: torch.device) -> bool:
    """True when ``device`` computes bf16 natively (CUDA bf16; CPU AMX tiles or AVX512-BF16), and
    :data:`NATIVE_BF16_ENV` does not say otherwise (:func:`bf16_support`)."""
    return bf16_support(device).native


def fast_dtype(device: torch.device) -> torch.dtype:
    """``torch.bfloat16`` where :func:`native_bf16`, else ``torch.float32``."""
    return torch.bfloat16 if native_bf16(device) else torch.float32


def set_threads(threads: int | None) -> int:
    """Sets torch's CPU threads when ``threads`` is given; returns the number in use."""
    if threads:
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


@dataclass(frozen=True)
class Runtime:
    """Where and how training tensors are computed.

    Attributes:
        device: the compute device of this process.
        amp_dtype: autocast dtype (``torch.bfloat16`` / ``torch.float16``), or None for fp32.
        channels_last: use ``torch.channels_last_3d`` for weights and inputs (CPU fast path).
        rank: this process's global rank (0 when not distributed).
        world_size: number of processes (1 when not distributed).
    """

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        """True under torchrun with more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on the process that writes files and shows progress bars."""
        return self.rank == 0

    @property
    def memory_format(self) -> torch.memory_format | None:
        """``torch.channels_last_3d`` when :attr:`channels_last`, else None (keep the layout)."""
        return torch.channels_last_3d if self.channels_last else None

    def place(self, model: torch.nn.Module) -> torch.nn.Module:
        """Moves ``model`` to the device, in :attr:`memory_format` when every convolution is 3D
        (a 2D baseline's rank-4 weights have no ``channels_last_3d``: they keep their layout)."""
        flat = any(p.ndim == 4 for p in model.parameters())
        return model.to(self.device, memory_format=None if flat else self.memory_format)

    def describe(self) -> str:
        """Short human description, e.g. ``"cpu bf16 channels_last_3d x2"``."""
        amp = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.amp_dtype, "fp32")
        layout = " channels_last_3d" if self.channels_last else ""
        procs = f" x{self.world_size}" if self.distributed else ""
        return f"{self.device.type} {amp}{layout}{procs}"


CPU_FP32 = Runtime(torch.device("cpu"), None, channels_last=False)
"""Plain fp32 on the CPU, one process (the reference the fast paths are measured against)."""


def fast_runtime(device: torch.device) -> Runtime:
    """The fastest precision and layout for training on ``device`` (one process, rank 0).

    CUDA: AMP in bf16 where supported, else fp16 (with a gradient scaler), and cuDNN benchmark.
    CPU: ``channels_last_3d`` always (oneDNN's native layout: 1-10% faster than contiguous in
    fp32 on an AMD EPYC without bf16, about 2x with bf16), plus bf16 autocast where
    :func:`native_bf16`.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        amp = torch.bfloat16 if native_bf16(device) else torch.float16
        return Runtime(device, amp, channels_last=False)
    return Runtime(device, torch.bfloat16 if native_bf16(device) else None, channels_last=True)


def setup_runtime(device: str = "auto") -> Runtime:
    """Picks the device and precision, and joins the process group under torchrun.

    Args:
        device: ``"auto"`` (CUDA when available), ``"cuda"`` or ``"cpu"``.

    Raises:
        ConfigError: an unknown device, or ``"cuda"`` when no CUDA device is visible.
    """
    dev = resolve_device(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if world_size > 1 else torch.cuda.current_device())
        torch.cuda.set_device(dev)
    rt = replace(fast_runtime(dev), rank=rank, world_size=world_size)
    if rt.distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return rt


def autocast(rt: Runtime) -> AbstractContextManager:
    """``torch.autocast`` to ``rt.amp_dtype`` (disabled for fp32)."""
    return torch.autocast(
        rt.device.type, dtype=rt.amp_dtype or torch.bfloat16, enabled=rt.amp_dtype is not None
    )


def to_device(x: torch.Tensor, rt: Runtime) -> torch.Tensor:
    """``x`` on ``rt.device``, in ``channels_last_3d`` when ``rt.channels_last``."""
    x = x.to(rt.device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last_3d) if rt.channels_last else x


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def gather(obj: Any, rt: Runtime) -> list[Any]:
    """All ranks' ``obj`` (a list of one element when not distributed)."""
    if not rt.distributed:
        return [obj]
    out: list[Any] = [None] * rt.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(rt: Runtime) -> None:
    """Waits for every rank (nothing to do in one process)."""
    if rt.distributed:
        dist.barrier()


def machine_facts() -> dict[str, Any]:
    """The machine a benchmark ran on, for its JSON: processor, cores and the load averages at
    the time of the call (``{"cpu", "cores", "loadavg_1_5_15"}``)."""
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "loadavg_1_5_15": list(os.getloadavg()),
    }
