r"""Training runs (``run.py``): arguments, run directory, checkpoints, schedules, evaluation.

``ovis.training.run.main(argv) -> exit code`` is what ``run.py`` calls; :class:`ovis.training.run.Trainer`
orchestrates the parts: :mod:`~ovis.training.arguments` (the command line), :mod:`~ovis.training.rundir`
(the run directory), :mod:`~ovis.training.checkpoint` (checkpoints and the resumable state),
:mod:`~ovis.training.schedules` (what happens at which step), :mod:`~ovis.training.rng` (data order and
evaluation seeds), :mod:`~ovis.training.optimizers`, :mod:`~ovis.training.sums` (running training means),
:mod:`~ovis.training.evaluation` (bounds, active units), :mod:`~ovis.training.variance` (tracked
gradient variances), :mod:`~ovis.training.samples` (sample grids), :mod:`~ovis.training.sinks` (log,
``metrics.jsonl``, TensorBoard), :mod:`~ovis.training.interrupt` (SIGTERM / SIGINT) and
:mod:`~ovis.training.device` (the device and torch's settings).
Submodules are imported on demand (``import ovis.training`` stays light).
"""
__all__ = ["arguments", "checkpoint", "device", "evaluation", "interrupt", "optimizers", "rng", "rundir", "run",
           "samples", "schedules", "sinks", "sums", "variance"]
