#!/usr/bin/env python
r"""Memory and time per training step vs K for a list of estimators (see ``ovis/reporting/efficiency.py``)."""
import sys

from ovis.reporting.efficiency import main

if __name__ == "__main__":
    sys.exit(main())
