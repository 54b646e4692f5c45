#!/usr/bin/env python
r"""One training run; see ``ovis.training.run`` (``python run.py --help``)."""
import sys

from ovis.training.run import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
