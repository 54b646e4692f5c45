r"""GPU discovery and the worker plan of ``manager.py`` (``--processes``, ``--max_gpus``,
``--max_load``, ``--max_memory``).

**Discovery** (:func:`query_gpus`) tries, in order, and keeps the first that answers:

1. ``nvidia-smi --query-gpu=index,utilization.gpu,memory.used,memory.total`` (load and memory);
2. NVML through ``pynvml`` (``nvmlDeviceGetCount``, utilisation and memory of each device);
3. ``torch.cuda`` (``device_count`` and ``mem_get_info``; the load is unknown and taken as 0),
   queried in a short child process so that the manager never holds a CUDA context (hundreds of
   MB on every GPU) while its jobs run.  Skipped on Linux when no NVIDIA driver is loaded
   (no ``/dev/nvidia0`` nor ``/proc/driver/nvidia``).

``CUDA_VISIBLE_DEVICES`` in the manager's environment restricts the choice to the indices it lists
(an empty value hides every GPU).

**The plan** (:func:`plan_workers`): a GPU is *usable* when its load is below ``max_load`` and its
memory use (used / total) below ``max_memory``; the first ``max_gpus`` usable GPUs (all of them
when ``max_gpus`` is ``None``; none when it is 0) each get ``P = processes`` worker slots, so
``G`` GPUs give ``G x P`` workers, each job's ``CUDA_VISIBLE_DEVICES`` being its slot's GPU index.
Without a usable GPU the plan is ``P`` workers on the CPU with ``max(1, cpu_count // P)``
OpenMP/MKL threads each.  When GPUs were asked for (``max_gpus`` given and > 0) and none is
usable, the plan carries one warning that says why (none found, or each GPU's load / memory
against the limits) and states the CPU plan.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

__all__ = ["GPUInfo", "WorkerPlan", "query_gpus", "usable_gpus", "discover_gpus", "plan_workers",
           "cpu_threads_per_worker"]

log = logging.getLogger("ovis.experiments")


@dataclass(frozen=True)
class GPUInfo:
    r"""One GPU as discovery sees it: ``index`` (the ``CUDA_VISIBLE_DEVICES`` value), ``load`` and
    ``memory`` (the used fraction of its memory), both in ``[0, 1]``, and the ``source`` that
    reported it (``nvidia-smi``, ``nvml`` or ``torch``)."""

    index: str
    load: float
    memory: float
    source: str


@dataclass
class WorkerPlan:
    r"""What the manager starts: ``slots`` (one device string per worker: a GPU index repeated
    ``processes`` times per GPU, or ``"cpu"``), ``gpus`` (the GPUs used), ``threads`` (OpenMP/MKL
    threads of each CPU worker; ``None`` on GPUs), ``found`` (every GPU discovered, usable or not)
    and ``warning`` (one line, or ``None``)."""

    slots: List[str]
    gpus: List[str]
    threads: Optional[int]
    found: List[GPUInfo] = field(default_factory=list)
    warning: Optional[str] = None

    def describe(self) -> str:
        r"""One line: ``GPUs 0, 1: 4 worker(s), 2 per GPU`` or ``cpu: 2 worker(s), 4 thread(s) each``."""
        if self.gpus:
            per = len(self.slots) // len(self.gpus)
            return f"GPUs {', '.join(self.gpus)}: {len(self.slots)} worker(s), {per} per GPU"
        return f"cpu: {len(self.slots)} worker(s), {self.threads} thread(s) each"


def cpu_threads_per_worker(workers: int, cpu_count: Optional[int] = None) -> int:
    r"""OpenMP/MKL threads of each of ``workers`` CPU workers: ``max(1, cpu_count // workers)``."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    return max(1, (cpu_count or os.cpu_count() or 1) // workers)


# ------------------------------------------------------------------------------------- sources
def _from_nvidia_smi() -> List[GPUInfo]:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=index,utilization.gpu,memory.used,memory.total",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=30, check=True).stdout
        gpus = []
        for line in out.strip().splitlines():
            idx, util, used, total = [s.strip() for s in line.split(",")]
            load = float(util) / 100 if util.replace(".", "").isdigit() else 0.0  # "[N/A]" on some boards
            gpus.append(GPUInfo(idx, load, float(used) / max(float(total), 1.0), "nvidia-smi"))
        return gpus
    except (subprocess.SubprocessError, OSError, ValueError) as e:
        log.warning("nvidia-smi failed (%s); trying other GPU discovery", e)
        return []


def _from_nvml() -> List[GPUInfo]:
    try:
        import pynvml  # type: ignore
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
        try:
            gpus = []
            for i in range(pynvml.nvmlDeviceGetCount()):
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                u = pynvml.nvmlDeviceGetUtilizationRates(h)
                m = pynvml.nvmlDeviceGetMemoryInfo(h)
                gpus.append(GPUInfo(str(i), u.gpu / 100, m.used / max(m.total, 1), "nvml"))
            return gpus
        finally:
            pynvml.nvmlShutdown()
    except Exception as e:  # noqa: BLE001 - NVML raises its own error types (no driver, ...)
        log.info("NVML GPU discovery failed: %s", e)
        return []


def torch_gpu_rows() -> List[Tuple[int, int, int]]:
    r"""``(index, free bytes, total bytes)`` of every GPU ``torch.cuda`` sees (run in the child)."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [(i, *torch.cuda.mem_get_info(i)) for i in range(torch.cuda.device_count())]


def _torch_rows_in_child() -> List[Tuple[int, int, int]]:
    r"""The default ``torch_rows``: ``torch_gpu_rows()`` run in a child Python process (so this
    process does not initialise CUDA); ``[(index, free bytes, total bytes)]``.

    Raises:
        subprocess.SubprocessError: the child fails or times out (120 s).
    """
    code = ("import json; from ovis.experiments.devices import torch_gpu_rows; "
            "print(json.dumps(torch_gpu_rows()))")
    env = dict(os.environ)
    pkg_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=True, env=env).stdout
    return [tuple(int(v) for v in row) for row in json.loads(out.strip().splitlines()[-1])]  # type: ignore[misc]


#: how the torch fallback is queried (a child process); tests replace it to fake ``torch.cuda``
torch_rows: Callable[[], List[Tuple[int, int, int]]] = _torch_rows_in_child


def nvidia_driver_loaded() -> bool:
    r"""Whether an NVIDIA driver may be present (always true off Linux, where it cannot be told)."""
    return (not sys.platform.startswith("linux") or Path("/dev/nvidia0").exists()
            or Path("/proc/driver/nvidia").exists())


def _from_torch() -> List[GPUInfo]:
    if not nvidia_driver_loaded():
        return []
    try:
        rows = torch_rows()
    except (subprocess.SubprocessError, OSError, ValueError, IndexError) as e:
        log.info("torch.cuda GPU discovery failed: %s", e)
        return []
    return [GPUInfo(str(i), 0.0, 1 - free / max(total, 1), "torch") for i, free, total in rows]


def query_gpus() -> List[GPUInfo]:
    r"""Every GPU of this machine (see the module docstring), restricted by the manager's
    ``CUDA_VISIBLE_DEVICES``; ``[]`` without GPU."""
    gpus = _from_nvidia_smi() or _from_nvml() or _from_torch()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() == "":
        return []
    if visible is not None and all(v.strip().isdigit() for v in visible.split(",")):
        allowed = {v.strip() for v in visible.split(",")}
        gpus = [g for g in gpus if g.index in allowed]
    return gpus


def usable_gpus(gpus: Sequence[GPUInfo], max_gpus: Optional[int] = None, max_load: float = 0.5,
                max_memory: float = 0.5) -> List[str]:
    r"""Indices of ``gpus`` with load < ``max_load`` and memory use < ``max_memory``, at most
    ``max_gpus`` (``None``: all), in discovery order."""
    if max_gpus is not None and max_gpus < 0:
        raise ValueError(f"--max_gpus must be >= 0, got {max_gpus}")
    ok = [g.index for g in gpus if g.load < max_load and g.memory < max_memory]
    return ok[:max_gpus] if max_gpus is not None else ok


def discover_gpus(max_gpus: Optional[int] = None, max_load: float = 0.5, max_memory: float = 0.5) -> List[str]:
    r"""Indices of this machine's usable GPUs (:func:`query_gpus` then :func:`usable_gpus`)."""
    return usable_gpus(query_gpus(), max_gpus, max_load, max_memory)


def plan_workers(processes: int, max_gpus: Optional[int] = None, max_load: float = 0.5,
                 max_memory: float = 0.5, gpus: Optional[Sequence[GPUInfo]] = None,
                 cpu_count: Optional[int] = None) -> WorkerPlan:
    r"""The manager's workers: ``processes`` per usable GPU, else ``processes`` on the CPU.

    ``gpus`` defaults to :func:`query_gpus` (not queried when ``max_gpus == 0``).  See the module
    docstring for the rule and the warning.
    """
    if processes < 1:
        raise ValueError(f"--processes must be >= 1, got {processes}")
    found = list(query_gpus() if gpus is None and max_gpus != 0 else (gpus or []))
    chosen = usable_gpus(found, max_gpus, max_load, max_memory)
    if chosen:
        return WorkerPlan([g for g in chosen for _ in range(processes)], chosen, None, found)
    threads = cpu_threads_per_worker(processes, cpu_count)
    plan = WorkerPlan(["cpu"] * processes, [], threads, found)
    if max_gpus is not None and max_gpus > 0:
        if not found:
            why = ("no GPU found (nvidia-smi, NVML and torch.cuda report none"
                   + ("; CUDA_VISIBLE_DEVICES is empty" if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "" else "")
                   + ")")
        else:
            why = "no GPU below --max_load {:g} and --max_memory {:g} ({})".format(
                max_load, max_memory, ", ".join(f"GPU {g.index}: load {g.load:.0%}, memory {g.memory:.0%}"
                                                for g in found))
        plan.warning = (f"--max_gpus {max_gpus} asked for GPUs but {why}: running on the CPU instead, "
                        f"{len(plan.slots)} worker(s) with {threads} thread(s) each")
    return plan
