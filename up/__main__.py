"""``python -m up``: ``flowmas up`` without the CLI."""

import sys

from up.main import main

sys.exit(main())
