#!/usr/bin/env python
r"""Figures and tables of an experiment from its run directories (see ``ovis/reporting/report.py``)."""
import sys

from ovis.reporting.report import main

if __name__ == "__main__":
    sys.exit(main())
