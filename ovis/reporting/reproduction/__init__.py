r"""``docs/reproduction.md``: the seed papers' experiments, regenerated from the experiment system
and set beside the papers' published numbers (``make reproduce``, ``reproduce.py``).

One module per paper, each describing its part as a :class:`~ovis.reporting.reproduction.common.Paper`:

* :mod:`ovis.reporting.reproduction.ovis_paper`: the OVIS paper's Figures 1-4 and efficiency claim;

and the shared parts:

* :mod:`ovis.reporting.reproduction.common`: verdicts, figure sections, the marked blocks;
* :mod:`ovis.reporting.reproduction.document`: the runs (resumable), the document, the command line.
"""
from ovis.reporting.reproduction.common import (
    VERDICTS,
    Comparison,
    FigureSection,
    Paper,
    block_markers,
    estimator_color,
    ordering_verdict,
    slope_verdict,
)
from ovis.reporting.reproduction.document import (
    PAPERS,
    build_document,
    main,
    prepare_grids,
    run_grids,
    run_paper,
    select_papers,
)
from ovis.reporting.reproduction.ovis_paper import EFFICIENCY, EXPERIMENTS, PAPER, run_efficiency, shrink_grid

__all__ = [
    "PAPER",
    "PAPERS",
    "EXPERIMENTS",
    "EFFICIENCY",
    "VERDICTS",
    "Comparison",
    "FigureSection",
    "Paper",
    "shrink_grid",
    "prepare_grids",
    "run_grids",
    "run_paper",
    "run_efficiency",
    "select_papers",
    "ordering_verdict",
    "slope_verdict",
    "estimator_color",
    "build_document",
    "main",
    "block_markers",
]
