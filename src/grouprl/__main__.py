"""``python -m grouprl ...`` = the ``grouprl`` command (needed by ``torchrun -m grouprl``)."""

import sys

from grouprl.cli import main

sys.exit(main())
