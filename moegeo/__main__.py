"""``python -m moegeo``: the command line of ``moegeo.cli`` (also installed as ``moegeo``)."""
import sys

from .cli import main

sys.exit(main())
