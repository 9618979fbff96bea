"""``python -m moegeo``: the command line of ``moegeo.cli`` (also installed as ``moegeo``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
