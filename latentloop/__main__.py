"""`python -m latentloop ...` (what `torchrun -m latentloop train ...` runs)."""

import sys

from .cli import main

sys.exit(main())
