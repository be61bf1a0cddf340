"""`python -m clipfair ...` (what `torchrun -m clipfair run ...` starts in every process)."""

import sys

from .cli import main

sys.exit(main())
