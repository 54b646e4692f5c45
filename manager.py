#!/usr/bin/env python
r"""Run an experiment grid: ``python manager.py --exp EXP [...]`` (see ``ovis.experiments.manager``)."""
import sys

from ovis.experiments.manager import manager_main

if __name__ == "__main__":
    sys.exit(manager_main())
