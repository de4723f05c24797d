"""``python -m mcdrop``: the ``mcdrop`` command line (see :mod:`mcdrop.cli`)."""

import sys

from mcdrop.cli import main

if __name__ == "__main__":
    sys.exit(main())
