"""``python -m loveda_utils <command>``."""

from .cli import main

raise SystemExit(main())
