"""``python -m rajax <command>``: the same as the ``rajax`` console script."""
import sys

from rajax.cli.main import main

sys.exit(main())
