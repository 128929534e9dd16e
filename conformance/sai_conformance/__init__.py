"""sai_conformance: golden vectors from the SGD-SaI reference and the suite that replays them.

Every backend implements a small runner protocol (:class:`Runner`); the harness replays each golden
case one step at a time from the reference's state (*one-step*) and end to end (*trajectory*), and
compares with the tolerance of the case's dtype (:data:`TOLERANCES`).
"""

from ._golden import Case
from ._golden import Group
from ._golden import Snapshot
from ._golden import load_cases
from ._harness import CaseResult
from ._harness import Runner
from ._harness import available_runners
from ._harness import check_case
from ._harness import format_table
from ._tolerances import TOLERANCES
from ._tolerances import Tolerance

__all__ = [
    "Case",
    "CaseResult",
    "Group",
    "Runner",
    "Snapshot",
    "TOLERANCES",
    "Tolerance",
    "available_runners",
    "check_case",
    "format_table",
    "load_cases",
]
