r"""The device of a run (``--device``) and the process-wide torch settings around it."""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from typing import Iterator, Optional

import torch

from ovis.utils.memory import retain_freed_memory

__all__ = ["device_unavailable", "resolve_device", "torch_settings"]


def device_unavailable(spec: str) -> Optional[str]:
    r"""Why ``--device spec`` cannot run on this machine (one line), or ``None`` when it can.

    ``cuda`` / ``cuda:N`` need ``torch.cuda.is_available()`` and ``N < torch.cuda.device_count()``
    (the devices ``CUDA_VISIBLE_DEVICES`` leaves visible); ``auto`` and ``cpu`` always run.
    Checked by ``run.py`` right after parsing, before anything is written; not by
    :func:`ovis.training.arguments.parse_run_args`, which also validates grids on machines that
    only queue jobs for others.
    """
    if not spec.startswith("cuda"):
        return None
    if not torch.cuda.is_available():
        why = ("this PyTorch build has no CUDA" if torch.version.cuda is None else
               "no CUDA device is visible" + (" (CUDA_VISIBLE_DEVICES is empty)"
                                              if os.environ.get("CUDA_VISIBLE_DEVICES") == "" else ""))
        return (f"run.py: error: argument --device: {spec} requested but CUDA is not available on this "
                f"machine ({why}, torch {torch.__version__}); use --device cpu or --device auto")
    n = torch.cuda.device_count()
    index = int(spec.split(":")[1]) if ":" in spec else 0
    if index >= n:
        return (f"run.py: error: argument --device: {spec} requested but only {n} CUDA device(s) are "
                f"visible (cuda:0..cuda:{n - 1}); use one of them or --device auto")
    return None


def resolve_device(spec: str) -> torch.device:
    r"""``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        ValueError: ``spec`` is none of these.
        RuntimeError: the device is not available (:func:`device_unavailable`'s line).
    """
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", spec):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {spec!r}")
    why = device_unavailable(spec)
    if why is not None:
        raise RuntimeError(why)
    return torch.device(spec)


@contextmanager
def torch_settings(device: torch.device, deterministic: bool = False, flush_denormal: bool = True,
                   retain_memory: bool = True) -> Iterator[None]:
    r"""torch's settings for a run inside the block, restored after it.

    * ``deterministic``: ``torch.use_deterministic_algorithms(True, warn_only=True)``, cuDNN
      deterministic without benchmarking (and ``CUBLAS_WORKSPACE_CONFIG`` when unset);
    * on the CPU, ``flush_denormal``: denormal floats flushed to zero;
    * on the CPU, ``retain_memory``: freed memory kept by the allocator (:mod:`ovis.utils.memory`;
      process-wide and one-way: not restored).
    """
    det = torch.are_deterministic_algorithms_enabled()
    det_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn_det, cudnn_bench = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    flushed = False
    try:
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        if device.type == "cpu" and flush_denormal:
            flushed = torch.set_flush_denormal(True)
        if device.type == "cpu" and retain_memory:
            retain_freed_memory()
        yield
    finally:
        torch.use_deterministic_algorithms(det, warn_only=det_warn)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn_det, cudnn_bench
        if flushed:
            torch.set_flush_denormal(False)
