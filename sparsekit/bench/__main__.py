"""``python -m sparsekit.bench``: the benchmark report, the same as ``sparsekit bench``."""

import sys

from sparsekit.bench.command import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m sparsekit.bench"))
