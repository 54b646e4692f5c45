r"""Training runs (``run.py``): arguments, run directory, checkpoints, schedules, evaluation.

``ovis.training.run.main(argv) -> exit code`` is what ``run.py`` calls; see
:mod:`ovis.training.run` for the behaviour and :mod:`ovis.training.rundir` for the run directory.
Submodules are imported on demand (``import ovis.training`` stays light).
"""
__all__ = ["arguments", "checkpoint", "evaluation", "rundir", "run", "schedules"]
