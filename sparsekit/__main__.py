"""``python -m sparsekit``: the same command line as the ``sparsekit`` console script."""

import sys

from sparsekit.cli import main

if __name__ == "__main__":
    sys.exit(main())
