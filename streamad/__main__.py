"""Run the command line with ``python -m streamad``."""

import sys

from streamad.cli import main

sys.exit(main())
