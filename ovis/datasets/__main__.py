r"""``python -m ovis.datasets fetch NAME [NAME ...] [--data_root DIR] [--mirror URL]... [--mirrors-only]
[--force]``: download, verify and place data sets (see :mod:`ovis.datasets.fetch`)."""
import sys

from ovis.datasets.fetch import main

if __name__ == "__main__":
    sys.exit(main())
