"""`python -m app.healthcheck`: exit 0 when the server in this container answers /ready with 200, else 1.

The image's and compose's healthcheck. A command with no quoted script in it survives every
engine: podman 4.3's Docker API splits the arguments of a `python -c "…"` healthcheck on spaces.
"""

from __future__ import annotations

import os
import sys
import urllib.request


def main() -> int:
    port = os.environ.get("CLIPSEARCH_PORT", "8000")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=4) as response:
            return 0 if response.status == 200 else 1
    except OSError:  # refused, timed out, or an HTTP error status (503 while loading)
        return 1


if __name__ == "__main__":
    sys.exit(main())
