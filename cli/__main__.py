"""`python -m fusetomo.cli ...`: the `fusetomo` command."""

import sys

from fusetomo.cli import main

sys.exit(main())
