r"""Reports: the paper's figures and tables, read from run directories (``spec/reports.md``)."""
from ovis.reporting.outputs import render_index, save_figure, write_table
from ovis.reporting.report import curve_table, parse_report_args, pivot_table, report_experiment
from ovis.reporting.report import main as report_main
from ovis.reporting.runs import ExperimentData, NoRunsError, RunRecord, read_experiment, read_run

__all__ = [
    "ExperimentData",
    "NoRunsError",
    "RunRecord",
    "read_experiment",
    "read_run",
    "curve_table",
    "pivot_table",
    "parse_report_args",
    "report_experiment",
    "report_main",
    "render_index",
    "save_figure",
    "write_table",
]
