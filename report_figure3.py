#!/usr/bin/env python
r"""Figure 3: SBN curves of the test L_K per estimator and K (``--figure left``: runs tagged
iwbound; ``--figure right``: iwrbound, Renyi warm-up and TVO). See ``ovis/reporting/figure3.py``."""
import sys

from ovis.reporting.figure3 import main

if __name__ == "__main__":
    sys.exit(main())
