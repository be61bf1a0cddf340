"""`python -m clipfair ...` (what `torchrun -m clipfair run ...` starts in every process).

Layer: cli.
"""

import sys

from .cli import main

sys.exit(main())
