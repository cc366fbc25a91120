"""``python -m rxinvoke``."""

import sys

from .cli import main

sys.exit(main())
