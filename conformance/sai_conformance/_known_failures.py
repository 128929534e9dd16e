"""Known conformance failures, as data: ``(runner glob, case glob) -> reason``.

A pair listed here is expected to fail; the tests mark it ``xfail(strict=True)``, so a fix that
makes it pass also fails until the line is removed. Keep every line's reason specific.
"""

from __future__ import annotations

import fnmatch

__all__ = ["KNOWN_FAILURES", "known_failure"]

KNOWN_FAILURES: dict[tuple[str, str], str] = {}


def known_failure(runner: str, case: str) -> str | None:
    """The reason a runner is known to fail a case, or ``None``."""
    for (runner_glob, case_glob), reason in KNOWN_FAILURES.items():
        if fnmatch.fnmatchcase(runner, runner_glob) and fnmatch.fnmatchcase(case, case_glob):
            return reason
    return None
