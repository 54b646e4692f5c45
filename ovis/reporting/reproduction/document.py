r"""``docs/reproduction.md``: run each paper's reproduction grids (resumable), then write the document.

``python reproduce.py [--papers ovis,...] [--root runs/reproduce] [--data_root ../shared/data]
[--output docs] [--processes 2] [--scale full|tiny] [--document_only]``

The document has one part per paper of :data:`PAPERS` (a :class:`~ovis.reporting.reproduction.common.Paper`
each), between the markers ``<!-- paper:KEY -->`` and ``<!-- /paper:KEY -->``:

1. *Runs* (resumable, :func:`run_paper`): each grid of a selected paper is queued and drained by
   ``manager.py`` (a first call creates the experiment; a later call continues it with
   ``--resume``, so succeeded jobs are kept and interrupted runs resume from their checkpoints),
   then the paper's runs that are not grids (``Paper.extra_runs``).  The wall time of every call
   is added to ``<root>/reproduction-times.json``.
2. *Document* (:func:`build_document`): the selected papers' parts are rewritten from the run
   directories; the other papers' parts already in ``<output>/reproduction.md`` are kept as they
   are, so one paper's runs can be redone without the others'.  Figures go to ``<output>/figures/``.

``--scale tiny`` shrinks every grid (``Paper.shrink``: a few estimators, one seed, a few steps)
into ``<root>/grids/``: a smoke test of the whole chain (the test suite uses it).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence

from ovis.reporting.reproduction.common import (
    Paper,
    _add_time,
    block_markers,
    existing_blocks,
    part_markdown,
)
from ovis.reporting.reproduction.igr_paper import IGR_PAPER
from ovis.reporting.reproduction.ovis_paper import OVIS_PAPER
from ovis.reporting.reproduction.rebar_paper import REBAR_PAPER
from ovis.utils.files import atomic_write_bytes

#: every paper of the document, in the document's order (``--papers`` picks among their keys)
PAPERS: Dict[str, Paper] = {p.key: p for p in (OVIS_PAPER, REBAR_PAPER, IGR_PAPER)}


def select_papers(keys: Optional[Sequence[str]]) -> List[Paper]:
    r"""The :data:`PAPERS` named by ``keys`` in the document's order (all of them for ``None``).

    Raises:
        ValueError: a key that is not in :data:`PAPERS` (the message lists the valid keys).
    """
    if keys is None:
        return list(PAPERS.values())
    unknown = [k for k in keys if k not in PAPERS]
    if unknown:
        raise ValueError(f"unknown paper(s) {unknown}: choose among {list(PAPERS)}")
    return [p for k, p in PAPERS.items() if k in set(keys)]


def prepare_grids(repo: Path, root: Path, scale: str, paper: Paper = OVIS_PAPER) -> Dict[str, Path]:
    r"""The grid file of each figure of ``paper``: ``experiments/<name>.json`` at ``scale='full'``,
    or its ``paper.shrink`` version written to ``<root>/grids/<name>.json`` at ``scale='tiny'``.

    Raises:
        FileNotFoundError: a grid file of the paper is not in ``<repo>/experiments``.
    """
    files: Dict[str, Path] = {}
    for fig, name in paper.experiments.items():
        src = repo / "experiments" / f"{name}.json"
        if not src.is_file():
            raise FileNotFoundError(f"grid file {src} is missing (it ships with the repository)")
        if scale == "full":
            files[fig] = src
            continue
        dst = root / "grids" / f"{name}.json"
        dst.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(dst, (json.dumps(paper.shrink(json.loads(src.read_text()), fig), indent=2) + "\n").encode())
        files[fig] = dst
    return files


def run_grids(repo: Path, root: Path, data_root: Path, grids: Mapping[str, Path], processes: int,
              log: Callable[[str], None] = print) -> Dict[str, int]:
    r"""Drain every grid with ``manager.py`` (``--resume`` when the experiment exists); returns the
    exit code of each call, keyed by experiment name (the grid file's stem)."""
    codes: Dict[str, int] = {}
    for fig, grid in grids.items():
        name = Path(grid).stem
        exists = (root / name / "queue.json").exists()
        cmd = [sys.executable, str(repo / "manager.py"), "--exp", str(grid), "--processes", str(processes),
               "--root", str(root), "--data_root", str(data_root), "--no_progress"]
        if exists:
            cmd += ["--resume", "--update_exp"]
        log(f"[reproduce] {fig}: {'continuing' if exists else 'starting'} {name}")
        t0 = time.time()
        codes[name] = subprocess.run(cmd, cwd=repo).returncode
        _add_time(root, name, time.time() - t0)
    return codes


def run_paper(repo: Path, root: Path, data_root: Path, paper: Paper, scale: str, processes: int,
              log: Callable[[str], None] = print) -> Dict[str, int]:
    r"""All of ``paper``'s runs: its grids (:func:`run_grids`), then ``paper.extra_runs``; returns
    the exit code of each call."""
    codes = run_grids(repo, root, data_root, prepare_grids(repo, root, scale, paper), processes, log)
    if paper.extra_runs is not None:
        codes.update(paper.extra_runs(repo, root, data_root, scale, log))
    return codes


HEADER = (
    "# Reproducing the seed papers on a laptop\n\n"
    "Each part below takes one paper this library reproduces, sets the paper's published numbers (facts, "
    "cited) beside ours, and computes a verdict from the numbers. Every number, table and figure that is not "
    "the paper's is generated by `make reproduce` from the runs of this repository's experiment system and "
    "written by `ovis/reporting/reproduction/`; the runs are sized for a laptop (2 CPU cores), so the parts "
    "compare orderings and trends, not the papers' final values.")


def build_document(root: Path, output: Path, papers: Optional[Sequence[str]] = None, scale: str = "full") -> Path:
    r"""Write ``<output>/reproduction.md`` and ``<output>/figures/*.png`` from the runs under
    ``root``; returns the document's path.  ``papers``: the keys of the parts to rewrite (all of
    :data:`PAPERS` for ``None``); the other parts already in the document are kept as they are
    (a part that is neither chosen nor there is left out).  Works on whatever subset of the runs
    has finished.

    Raises:
        ValueError: an unknown paper key.
    """
    root, output = Path(root), Path(output)
    chosen = {p.key for p in select_papers(papers)}
    fig_dir = output / "figures"
    path = output / "reproduction.md"
    try:
        kept = existing_blocks(path.read_text(encoding="utf-8"))
    except OSError:
        kept = {}
    try:
        times = json.loads((root / "reproduction-times.json").read_text())
    except (OSError, ValueError):
        times = {}
    parts = []
    for key, paper in PAPERS.items():
        if key in chosen:
            parts.append(part_markdown(paper, paper.sections(root, fig_dir, scale), times))
        elif key in kept:
            parts.append(kept[key])
    keys = ", ".join(f"`{k}`" for k in PAPERS)
    doc = "\n\n".join([
        HEADER, *parts,
        "## Regenerate\n\n```bash\nmake reproduce   # runs (resumable: a rerun continues where the last stopped), "
        "then this document\npython reproduce.py --papers ovis   # one paper's runs and part; the others are kept\n"
        f"```\n\nThe papers: {keys}.",
    ]) + "\n"
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, doc.encode())
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    r"""The ``reproduce.py`` command line (see the module docstring); returns the exit code."""
    p = argparse.ArgumentParser(prog="reproduce.py", description="Run the reproduction grids (resumable) and "
                                "write docs/reproduction.md with its figures.")
    p.add_argument("--papers", default=",".join(PAPERS),
                   help=f"comma-separated parts to run and rewrite (default all: {','.join(PAPERS)}); "
                   "the other parts of the document are kept")
    p.add_argument("--root", default="runs/reproduce", help="where the runs go (default runs/reproduce)")
    p.add_argument("--data_root", default="../shared/data", help="where the data sets are")
    p.add_argument("--output", default="docs", help="folder of reproduction.md and figures/ (default docs)")
    p.add_argument("--processes", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--scale", choices=["full", "tiny"], default="full",
                   help="full: the grids of experiments/; tiny: a smoke test of the chain")
    p.add_argument("--document_only", action="store_true", help="write the document from the runs there are")
    a = p.parse_args(sys.argv[1:] if argv is None else list(argv))
    if a.processes < 1:
        p.error(f"--processes must be >= 1, got {a.processes}")
    keys = [k.strip() for k in a.papers.split(",") if k.strip()]
    try:
        papers = select_papers(keys)
    except ValueError as e:
        p.error(f"--papers: {e}")
    repo = Path(__file__).resolve().parents[3]
    root = Path(a.root).resolve()
    data_root = Path(a.data_root).resolve()
    if not a.document_only:
        if not data_root.is_dir():
            print(f"reproduce.py: error: --data_root {a.data_root} is not a folder (point it at the MNIST IDX files, "
                  "e.g. ../shared/data)", file=sys.stderr)
            return 2
        root.mkdir(parents=True, exist_ok=True)
        for paper in papers:
            codes = run_paper(repo, root, data_root, paper, a.scale, a.processes)
            bad = {k: v for k, v in codes.items() if v != 0}
            if bad:
                print(f"reproduce.py: warning: some calls failed ({bad}); the document reports what finished",
                      file=sys.stderr)
    path = build_document(root, Path(a.output), [p.key for p in papers], a.scale)
    print(f"document written to {path}")
    return 0


__all__ = ["PAPERS", "select_papers", "prepare_grids", "run_grids", "run_paper", "build_document", "main",
           "block_markers"]
