#!/usr/bin/env python
r"""Figure 1 (variance / SNR / DSNR / |mean| vs K, sample distributions, fitted slopes) from the
runs of ``asymptotic_variance.py`` (see ``ovis/reporting/asymptotic.py``)."""
import sys

from ovis.reporting.asymptotic import main

if __name__ == "__main__":
    sys.exit(main())
