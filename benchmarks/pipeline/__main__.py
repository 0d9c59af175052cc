"""``python -m benchmarks.pipeline`` (``./workbook bench``)."""

import sys

from .cli import main

sys.exit(main())
