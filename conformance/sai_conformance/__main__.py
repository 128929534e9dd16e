"""``python -m sai_conformance``: the ``sai-conformance`` command (see :mod:`sai_conformance._cli`).

Without arguments it replays every golden case on every installed runner and prints the table,
as ``sai-conformance run`` does (``make demo``). Exit status 1 if any runner fails a case.
"""

from __future__ import annotations

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
