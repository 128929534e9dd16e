"""The reference optimizer against an independent, literal transcription of SPEC.md.

The transcription below is written from the contract's text with Python loops and ``math.fsum``
(correctly rounded sums), sharing no code with ``sai_core``: agreement to float64 rounding on random
cases of every shape, preset, momentum 0 and 0.9, maximize and absent blocks is the evidence that
the reference says what the contract says.
"""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest

from sai_core import PRESETS, NonFiniteGradientWarning, ReferenceSGDSaI, raw_gsnr, resolve_config

SHAPES = [(), (1,), (7,), (1, 16), (16, 1), (8, 16), (3, 4, 5, 6), (0,), (2, 0)]

# Rounding budget of the comparison: the reference sums with NumPy's pairwise summation, the
# transcription with math.fsum. Over at most 360 elements and 6 steps the two differ by a few
# hundred float64 units in the worst case: 1e-12 relative (2**-53 = 1.1e-16) leaves ample room
# while any formula difference (a missing (1 - mu), a biased std) is >= 1e-3.
RTOL = 1e-12


class LiteralSaI:
    """SPEC.md "One step", transcribed line by line (float64, plain Python over flat lists)."""

    def __init__(self, shapes, params, *, lr, momentum, weight_decay, eps, maximize, knobs):
        self.shapes = shapes
        self.theta = [list(map(float, np.asarray(p, dtype=np.float64).reshape(-1))) for p in params]
        self.hyper = dict(lr=lr, mu=momentum, wd=weight_decay, eps=eps, maximize=maximize)
        self.k = knobs
        self.S = [None] * len(shapes)
        self.m = [None] * len(shapes)
        self.M = None

    def raw_g(self, g, shape):
        n = len(g)
        norm = math.sqrt(math.fsum(x * x for x in g))
        if self.k["snr"] == "sqrt_numel":
            return math.sqrt(n)
        if self.k["vector_rule"] == "norm" and (len(shape) <= 1 or shape[0] == 1):
            return norm
        constant = n == 1 or max(g) == min(g)
        if constant:
            return {"sqrt_numel": math.sqrt(n), "norm": norm, "norm_over_eps": norm / self.hyper["eps"]}[
                self.k["degenerate"]
            ]
        mean = math.fsum(g) / n
        s = math.sqrt(math.fsum((x - mean) ** 2 for x in g) / (n - self.k["std_correction"]))
        return norm / (s + self.hyper["eps"])

    def informative(self, g):
        # 2. finite and, under zero_gradient="defer", not all zero; a zero-size block never is.
        if not g or not all(math.isfinite(x) for x in g):
            return False
        return self.k["zero_gradient"] == "degenerate" or any(x != 0 for x in g)

    def step(self, grads):
        h = self.hyper
        present = {}
        for i, g in enumerate(grads):
            if g is None:
                continue
            g = [float(x) for x in np.asarray(g, dtype=np.float64).reshape(-1)]
            present[i] = [-x for x in g] if h["maximize"] else g  # 1. maximize
        for i in [i for i in present if self.S[i] is None and not self.informative(present[i])]:
            del present[i]  # uninformative first gradient: as if the block had none
        new = {i: self.raw_g(g, self.shapes[i]) for i, g in present.items() if self.S[i] is None}
        if self.M is None and new:
            self.M = max(new.values())  # frozen at the first step at which any block initializes
        for i, G in new.items():
            self.S[i] = G / self.M if self.k["normalize"] == "max" else G
        for i, g in present.items():
            mu = h["mu"]
            if self.m[i] is None:  # 2. first gradient (or no buffer yet)
                m = list(g) if self.k["momentum_init"] == "grad" else [(1 - mu) * x for x in g]
            else:  # 3.
                m = [mu * a + (1 - mu) * b for a, b in zip(self.m[i], g)]
            if mu != 0:
                self.m[i] = m
            theta = [t - h["lr"] * h["wd"] * t for t in self.theta[i]]  # 4. decoupled decay
            self.theta[i] = [t - h["lr"] * self.S[i] * d for t, d in zip(theta, m)]  # 5. update


def _random_case(seed, preset, momentum, maximize):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s) for s in SHAPES]
    steps = []
    for step in range(5):
        row = []
        for i, shape in enumerate(SHAPES):
            absent = (step == 0 and i == 2) or (step == 3 and i == 5)
            g = None if absent else (0.3 * i + rng.standard_normal(shape)) * 10.0 ** rng.integers(-3, 3)
            if step < 2 and i == 5:
                g = np.zeros(shape)  # all-zero first gradients: deferred under "defer"
            if step == 0 and i == 6:
                g.reshape(-1)[3] = np.nan  # a non-finite first gradient: always deferred
            row.append(g)
        steps.append(row)
    return params, steps


def _assert_close(actual, expected, what):
    actual = np.asarray(actual, dtype=np.float64).reshape(-1)
    expected = np.asarray(expected, dtype=np.float64).reshape(-1)
    assert actual.shape == expected.shape, what
    if expected.size == 0:
        return
    scale = max(np.max(np.abs(expected)), 1e-300)
    err = np.max(np.abs(actual - expected)) / scale
    assert err <= RTOL, f"{what}: normwise relative error {err:.3g} > {RTOL}"


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_reference_matches_literal_transcription(preset, momentum, maximize, seed):
    params, steps = _random_case(seed, preset, momentum, maximize)
    hyper = dict(lr=0.05, momentum=momentum, weight_decay=0.1, eps=1e-8, maximize=maximize)
    ref = ReferenceSGDSaI(params, preset=preset, **hyper)
    lit = LiteralSaI(SHAPES, params, knobs=resolve_config(preset).knobs(), **hyper)
    for k, grads in enumerate(steps):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NonFiniteGradientWarning)
            ref.step(grads)
        lit.step(grads)
        for i in range(len(SHAPES)):
            _assert_close(ref.params[i], lit.theta[i], f"step {k + 1} block {i} params")
            assert (ref.scale[i] is None) == (lit.S[i] is None)
            if lit.S[i] is not None:
                _assert_close(ref.scale[i], lit.S[i], f"step {k + 1} block {i} scale")
            assert (ref.momentum_buffer[i] is None) == (lit.m[i] is None), f"block {i} buffer presence"
            if lit.m[i] is not None:
                _assert_close(ref.momentum_buffer[i], lit.m[i], f"step {k + 1} block {i} buffer")


def test_momentum_zero_keeps_no_buffer():
    opt = ReferenceSGDSaI([np.ones((3, 3)), np.ones(4)], momentum=0.0)
    for _ in range(3):
        opt.step([np.arange(9.0).reshape(3, 3), np.arange(4.0)])
    assert opt.momentum_buffer == [None, None]
    assert all("momentum_buffer" not in entry for entry in opt.state_dict()["state"].values())


def test_resume_from_state_dict_equals_uninterrupted():
    rng = np.random.default_rng(3)
    shapes = [(4, 5), (5,), ()]
    params = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(6)]
    straight = ReferenceSGDSaI(params)
    for g in grads:
        straight.step(g)
    first = ReferenceSGDSaI(params)
    for g in grads[:3]:
        first.step(g)
    saved = first.state_dict()
    resumed = ReferenceSGDSaI([p.copy() for p in first.params])
    resumed.load_state_dict(saved)
    for g in grads[3:]:
        resumed.step(g)
    for a, b in zip(straight.params, resumed.params):
        np.testing.assert_array_equal(a, b)  # exact: same operations in the same order
    assert resumed.max_gsnr == straight.max_gsnr


def test_state_dict_is_a_copy():
    opt = ReferenceSGDSaI([np.ones(3)])
    opt.step([np.array([1.0, 2.0, 4.0])])
    saved = opt.state_dict()
    buffer_before = saved["state"][0]["momentum_buffer"].copy()
    opt.step([np.array([1.0, 2.0, 4.0])])
    np.testing.assert_array_equal(saved["state"][0]["momentum_buffer"], buffer_before)


def test_max_gsnr_is_global_across_groups_and_frozen():
    big = np.arange(64.0).reshape(8, 8) + 100.0  # large mean: high g-SNR
    small = np.array([1.0, -1.0, 2.0])
    opt = ReferenceSGDSaI(
        [{"params": [np.ones((8, 8))], "lr": 0.1}, {"params": [np.ones(3)], "lr": 0.5}], preset="paper"
    )
    opt.step([big, small])
    m = float(opt.max_gsnr)
    assert float(opt.scale[0]) == 1.0
    assert 0 < float(opt.scale[1]) < 1
    opt.step([big * 1e3, small * 7])
    assert float(opt.max_gsnr) == m


def test_late_block_uses_frozen_max_and_may_exceed_one():
    late_gradient = np.full((4, 4), 5.0) + np.eye(4) * 1e-3  # nearly constant: g-SNR >> sqrt(n)
    opt = ReferenceSGDSaI([np.ones(4), np.ones((4, 4))], preset="paper")
    opt.step([np.array([1.0, -1.0, 0.5, 0.0]), None])
    assert opt.scale[1] is None
    np.testing.assert_array_equal(opt.params[1], np.ones((4, 4)))  # untouched, no weight decay
    m = float(opt.max_gsnr)
    opt.step([np.array([1.0, -1.0, 0.5, 0.0]), late_gradient])
    assert float(opt.max_gsnr) == m
    assert float(opt.scale[1]) > 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lr=-1.0), "Invalid lr: -1.0"),
        (dict(momentum=1.0), "Invalid momentum: 1.0"),
        (dict(momentum=-0.1), "Invalid momentum: -0.1"),
        (dict(weight_decay=-0.01), "Invalid weight_decay: -0.01"),
        (dict(eps=-1e-8), "Invalid eps: -1e-08"),
        (dict(lr=float("nan")), "Invalid lr: nan"),
        (dict(lr="0.1"), "Invalid lr: '0.1'"),
        (dict(maximize=1), "Invalid maximize: 1"),
        (dict(lr=None), "Invalid lr: None"),
        (dict(momentum=None), "Invalid momentum: None"),
        (dict(weight_decay=None), "Invalid weight_decay: None"),
        (dict(eps=None), "Invalid eps: None"),
        (dict(maximize=None), "Invalid maximize: None"),
        (dict(preset="adam"), "Invalid preset: 'adam'"),
        (dict(std_correction=2), "Invalid std_correction: 2"),
        (dict(degenerate="zero"), "Invalid degenerate: 'zero'"),
    ],
)
def test_invalid_arguments_name_argument_and_value(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        ReferenceSGDSaI([np.ones(2)], **kwargs)


def test_unknown_knob_is_a_type_error():
    with pytest.raises(TypeError, match="not_a_knob"):
        ReferenceSGDSaI([np.ones(2)], not_a_knob=1)


def test_bad_grads_are_rejected():
    opt = ReferenceSGDSaI([np.ones(2), np.ones(3)])
    with pytest.raises(ValueError, match="2 parameters"):
        opt.step([np.ones(2)])
    with pytest.raises(ValueError, match=r"grads\[1\]: shape \(2,\)"):
        opt.step([np.ones(2), np.ones(2)])


def test_schedule_changes_apply_at_the_next_step():
    opt = ReferenceSGDSaI([np.ones(3)], weight_decay=0.0)
    opt.step([np.array([1.0, 2.0, 3.0])])
    before = opt.params[0].copy()
    opt.param_groups[0]["lr"] = 0.0
    opt.step([np.array([1.0, 2.0, 3.0])])
    np.testing.assert_array_equal(opt.params[0], before)
    opt.param_groups[0]["momentum"] = 2.0
    with pytest.raises(ValueError, match="Invalid momentum: 2.0"):
        opt.step([np.array([1.0, 2.0, 3.0])])


def test_load_state_dict_rejects_other_knobs():
    a = ReferenceSGDSaI([np.ones(3)])
    b = ReferenceSGDSaI([np.ones(3)], preset="sgd-sai-1.0.3")
    with pytest.raises(ValueError, match="knobs"):
        b.load_state_dict(copy.deepcopy(a.state_dict()))


# --- SPEC v2: first gradients that are not informative ------------------------------------------

UNINFORMATIVE = [
    # (desc, preset, bad first gradient of block 1, warns)
    ("NaN", "sgd-sai", np.array([1.0, np.nan, 2.0, 0.5, -1.0]), True),
    ("+inf", "sgd-sai", np.array([1.0, np.inf, 2.0, 0.5, -1.0]), True),
    ("-inf under paper", "paper", np.array([1.0, -np.inf, 2.0, 0.5, -1.0]), True),
    ("NaN under a port preset", "sgd-sai-1.0.3", np.array([np.nan] * 5), True),
    ("all zero", "sgd-sai", np.zeros(5), False),
    ("all zero under paper", "paper", np.zeros(5), False),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("preset, bad, warns", [c[1:] for c in UNINFORMATIVE], ids=[c[0] for c in UNINFORMATIVE])
def test_uninformative_first_gradient_is_as_if_absent(preset, bad, warns, dtype):
    rng = np.random.default_rng(11)
    params = [rng.standard_normal((6, 4)), rng.standard_normal(5), rng.standard_normal(3)]
    good = [[0.2 + rng.standard_normal(p.shape) for p in params] for _ in range(3)]

    def run(first_of_block_1):
        opt = ReferenceSGDSaI(params, preset=preset, dtype=dtype)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            opt.step([good[0][0], first_of_block_1, good[0][2]])
            snapshot = ([p.copy() for p in opt.params], list(opt.scale), opt.max_gsnr)
            opt.step([good[1][0], bad, good[1][2]])  # still not informative: still deferred
            opt.step(good[2])
        return opt, snapshot, [w for w in caught if issubclass(w.category, NonFiniteGradientWarning)]

    opt, after_bad, caught = run(bad)
    reference, after_absent, _ = run(None)
    assert after_bad[1] == after_absent[1] and after_bad[2] == after_absent[2]  # scales, M: exactly
    for a, b in zip(after_bad[0], after_absent[0]):
        np.testing.assert_array_equal(a, b)
    assert after_bad[1][1] is None
    np.testing.assert_array_equal(after_bad[0][1], np.asarray(params[1], dtype=dtype))  # untouched
    # Initialized from its first informative gradient (step 3): G of that gradient.
    expected = float(raw_gsnr(np.asarray(good[2][1], dtype=dtype), eps=1e-8, config=opt.config, xp=np))
    if opt.config.normalize == "max":
        expected /= float(opt.max_gsnr)
    assert float(opt.scale[1]) == pytest.approx(expected, rel=1e-6)
    assert len(caught) == (1 if warns else 0)  # once per block, though two steps had NaN
    if warns:
        assert "parameter 1 (shape (5,))" in str(caught[0].message)


def test_zero_gradient_initializes_under_port_presets():
    opt = ReferenceSGDSaI([np.ones(4), np.ones(3)], preset="sgd-sai-1.0.3")
    opt.step([np.array([1.0, -1.0, 0.5, 0.0]), np.zeros(3)])
    assert float(opt.scale[1]) == 0.0  # ||0|| / eps: the port freezes the tensor


def test_zero_size_block_alone_never_sets_max():
    opt = ReferenceSGDSaI([np.ones((0, 4)), np.ones((3, 3)), np.ones(5)], preset="paper")
    opt.step([np.ones((0, 4)), None, None])
    assert opt.max_gsnr is None and opt.scale == [None, None, None]
    assert opt.state_dict()["state"] == {}
    opt.step([np.ones((0, 4)), np.arange(9.0).reshape(3, 3), np.array([1.0, 2.0, 0.0, 1.0, 3.0])])
    assert opt.scale[0] is None and float(opt.max_gsnr) > 0
    assert float(opt.scale[1]) == 1.0 or float(opt.scale[2]) == 1.0  # M is one of theirs
    assert not np.array_equal(opt.params[1], np.ones((3, 3)))


def test_max_is_frozen_at_the_first_initialization_not_the_first_step():
    opt = ReferenceSGDSaI([np.ones((4, 4)), np.ones(6)], preset="paper")
    opt.step([np.zeros((4, 4)), np.zeros(6)])  # nothing informative: M stays unset
    assert opt.max_gsnr is None
    opt.step([None, np.array([1.0, 2.0, 0.0, -1.0, 3.0, 1.0])])
    m = float(opt.max_gsnr)
    assert float(opt.scale[1]) == 1.0
    opt.step([np.arange(16.0).reshape(4, 4) + 50.0, None])  # a larger G later: M stays
    assert float(opt.max_gsnr) == m and float(opt.scale[0]) > 1.0


def test_float32_overflowing_first_gradient_gives_float64_scales():
    from sai_conformance._tolerances import TOLERANCES

    rng = np.random.default_rng(5)
    grads = [
        ((0.3 + rng.standard_normal((16, 8))) * 1e30).astype(np.float32),
        rng.standard_normal(7).astype(np.float32),
    ]
    f32 = ReferenceSGDSaI([np.ones((16, 8)), np.ones(7)], dtype=np.float32)
    f64 = ReferenceSGDSaI([np.ones((16, 8)), np.ones(7)])
    f32.step(grads)
    f64.step(grads)
    for a, b in zip(f32.scale, f64.scale):
        assert np.isfinite(a) and abs(float(a) - float(b)) <= TOLERANCES["float32"].one_step * float(b)
