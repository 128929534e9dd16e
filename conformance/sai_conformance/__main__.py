"""``python -m sai_conformance``: replay every golden case on every installed runner, print the table.

Exit status 1 if any runner fails a case.
"""

from __future__ import annotations

import sys
import time

from ._golden import load_cases
from ._harness import MODES, available_runners, check_case, format_table


def main() -> int:
    cases = load_cases()
    runners = available_runners()
    print(f"sai-conformance: {len(cases)} golden cases x {len(runners)} runners x {len(MODES)} modes")
    started = time.perf_counter()
    results = [check_case(runner, case, mode) for runner in runners for case in cases for mode in MODES]
    print(format_table(results))
    print(f"({time.perf_counter() - started:.1f} s)")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
