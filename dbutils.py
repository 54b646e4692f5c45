#!/usr/bin/env python
r"""Inspect and edit an experiment's queue: ``python dbutils.py --exp EXP --check`` (see ``ovis.experiments.dbutils``)."""
import sys

from ovis.experiments.dbutils import dbutils_main

if __name__ == "__main__":
    sys.exit(dbutils_main())
