"""``python -m sai_gsnr``: the ``sai-gsnr`` command (see :mod:`sai_gsnr._cli`)."""

from __future__ import annotations

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
