"""The one tolerance table of the conformance suite, keyed by dtype, each entry with its reason.

Errors are measured per block and normwise: ``max|actual - expected| <= rtol * max|expected|``
(plus the dtype's smallest normal number, so exact zeros compare exactly). Normwise rather than
elementwise because an update can move an element through zero, where an elementwise relative
error is meaningless; every block is still compared on its own, so a small block cannot hide
behind a large one. Scalars (the scale ``S`` and ``M``) use the plain relative error.
"""

from __future__ import annotations

import dataclasses

__all__ = ["TOLERANCES", "Tolerance"]


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """Relative tolerances of one dtype for the two comparison modes."""

    one_step: float
    trajectory: float
    tiny: float  # absolute floor: the dtype's smallest normal number
    reason: str

    def rtol(self, mode: str) -> float:
        if mode not in ("one_step", "trajectory"):
            raise ValueError(f"Invalid mode: {mode!r} (expected 'one_step' or 'trajectory')")
        return self.one_step if mode == "one_step" else self.trajectory


TOLERANCES: dict[str, Tolerance] = {
    "float64": Tolerance(
        one_step=1e-12,
        trajectory=1e-11,
        tiny=2.2250738585072014e-308,
        reason=(
            "the g-SNR is a ratio of two reductions over at most 360 elements; libraries sum in "
            "different orders, which moves a float64 reduction by up to ~n*2**-53 = 4e-14 "
            "relative. 1e-12 leaves 25x headroom for one step; 4 steps of drift stay under 1e-11"
        ),
    ),
    "float32": Tolerance(
        one_step=4e-6,
        trajectory=1e-5,
        tiny=1.1754943508222875e-38,
        reason=(
            "float32 rounding unit 2**-24 = 6e-8; each reduction (pairwise or blocked) errs by "
            "up to ~log2(n)*2**-24 = 5e-7 and the g-SNR combines two of them, a sqrt and a "
            "division: ~2e-6 on the scale, hence 4e-6 for one step. Trajectories stay within "
            "the contract's 1e-5 (SPEC.md)"
        ),
    ),
    "bfloat16": Tolerance(
        one_step=8e-3,
        trajectory=3e-2,
        tiny=1.1754943508222875e-38,
        reason=(
            "bfloat16 keeps 8 significant bits: storing a parameter or buffer rounds it by up to "
            "2**-9 = 2e-3 relative to the block's largest element; one step stores twice "
            "(buffer, then parameter from it) with statistics in float32, so 8e-3 is 4 units; "
            "over 4 steps the stored roundings accumulate to at most ~8 units plus drift: 3e-2"
        ),
    ),
}
