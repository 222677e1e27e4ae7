"""`python -m crosslayer ...`: the same command line as the `crosslayer` script."""

import sys

from crosslayer.commands import main

sys.exit(main())
