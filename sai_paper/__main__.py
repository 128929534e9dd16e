"""``python -m sai_paper``: the paper check (see :mod:`sai_paper._cli`)."""

from __future__ import annotations

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
