#!/usr/bin/env python
r"""Figure 1 data: gradient variance / SNR / DSNR vs K on the Gaussian toy model
(see ``ovis/analysis/asymptotic.py``)."""
import sys

from ovis.analysis.asymptotic import main

if __name__ == "__main__":
    sys.exit(main())
