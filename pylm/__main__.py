"""``python -m pylm``: the ``pylm`` command (pylm/cli.py)."""

import sys

from pylm.cli import main

sys.exit(main())
