"""``python -m qhpc.api --db PATH --port N``: serve the broker's REST API."""

from __future__ import annotations

import sys

from qhpc.api.server import main

if __name__ == "__main__":
    sys.exit(main())
