#!/usr/bin/env python
r"""docs/reproduction.md: run the reproduction grids (resumable), then write the document
(see ``ovis/reporting/reproduction/``)."""
import sys

from ovis.reporting.reproduction import main

if __name__ == "__main__":
    sys.exit(main())
