"""The g-SNR inspector: the reports of ``sai_torch`` and ``sai_jax`` on gradients whose ``G`` is known,
and ``sai-gsnr`` on unseen modules, torch checkpoints, optax ``.npz`` states and bad input.

Keras has its own file (``tests/test_gsnr_keras.py``, a subprocess per backend).

The constructed gradients are a +-1 pattern plus a constant ``c`` (``loss = sum(param * target)``
makes the gradient ``target``): ``sum(d) = 0`` and ``sum(d^2) = n``, so ``||g||^2 = n (c^2 + 1)``,
``s^2 = n / (n - 1)`` and ``G = sqrt((n - 1) (c^2 + 1))`` exactly; ``G / sqrt(n - 1) = sqrt(c^2 + 1)``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from sai_gsnr._cli import main
from sai_jax import gsnr_report as jax_gsnr_report
from sai_jax import scale_report as jax_scale_report
from sai_jax import sgd_sai
from sai_torch import SGDSaI
from sai_torch import gsnr_report as torch_gsnr_report
from sai_torch import scale_report as torch_scale_report

OFFSETS = {"matrix": 0.5, "vector": 0.0, "cube": -0.25}
SHAPES = {"matrix": (16, 8), "vector": (6,), "cube": (2, 3, 4)}
# Every element (+-1 + c, c a small power-of-two fraction) and every partial sum are exact in
# float32, so the float32 statistic differs from the exact G only by the rounding of two square
# roots and one division (half an ulp each): 4 ulps leave margin. (The expected value includes eps.)
RTOL = {torch.float32: 4 * 2.0**-23, torch.float64: 4 * 2.0**-52}
JAX_RTOL = 4 * 2.0**-23  # JAX computes in float32 (x64 off)


def pattern(shape: tuple[int, ...], offset: float) -> np.ndarray:
    n = math.prod(shape)
    return (np.where(np.arange(n) % 2 == 0, 1.0, -1.0) + offset).reshape(shape)


def expected_gsnr(name: str, eps: float = 1e-8) -> float:
    """``||g|| / (s + eps)`` in closed form: ``sqrt((n - 1) (c^2 + 1))`` up to the eps term."""
    n = math.prod(SHAPES[name])
    return math.sqrt(n * (OFFSETS[name] ** 2 + 1)) / (math.sqrt(n / (n - 1)) + eps)


class Constructed(torch.nn.Module):
    """Parameters whose gradient under :func:`constructed_loss` is :func:`pattern`, plus one unused."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        for name, shape in SHAPES.items():
            self.register_parameter(name, torch.nn.Parameter(torch.zeros(shape, dtype=dtype)))
        self.scalar = torch.nn.Parameter(torch.zeros((), dtype=dtype))
        self.unused = torch.nn.Parameter(torch.zeros(3, dtype=dtype))


def constructed_loss(model: Constructed) -> torch.Tensor:
    loss = sum(
        (getattr(model, name) * torch.tensor(pattern(SHAPES[name], OFFSETS[name]), dtype=model.matrix.dtype)).sum()
        for name in SHAPES
    )
    return loss + 3.0 * model.scalar  # a 1-element block: G = sqrt(1) by the degenerate rule


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_torch_report_numbers_on_constructed_gradients(dtype):
    model = Constructed(dtype)
    report = torch_gsnr_report(model, constructed_loss)
    rows = {row.name: row for row in report.rows}
    assert [row.name for row in report.rows] == [name for name, _ in model.named_parameters()]
    for name, shape in SHAPES.items():
        row = rows[name]
        assert row.shape == shape and row.numel == math.prod(shape)
        assert row.sqrt_numel == math.sqrt(math.prod(shape))
        assert row.gsnr == pytest.approx(expected_gsnr(name), rel=RTOL[dtype])
        assert row.scale == row.gsnr  # preset sgd-sai: S = G
        assert row.ratio == pytest.approx(expected_gsnr(name) / math.sqrt(math.prod(shape) - 1), rel=RTOL[dtype])
        # G / sqrt(n - 1) = sqrt(c^2 + 1) up to the eps term (eps / s < 1e-8 relative) and rounding.
        assert row.ratio == pytest.approx(math.sqrt(OFFSETS[name] ** 2 + 1), rel=RTOL[dtype] + 1e-8)
    assert rows["scalar"].gsnr == 1.0 and rows["scalar"].ratio is None
    assert rows["unused"].gsnr is None and rows["unused"].note == "no gradient"
    assert report.max_gsnr == max(rows[name].gsnr for name in SHAPES)
    assert all(p.grad is None for p in model.parameters())  # the caller's .grad is left alone


def test_torch_report_paper_preset_divides_by_m():
    report = torch_gsnr_report(Constructed(), constructed_loss, preset="paper")
    rows = {row.name: row for row in report.rows}
    m = expected_gsnr("matrix")  # the largest G
    assert report.max_gsnr == pytest.approx(m, rel=RTOL[torch.float32])
    for name in SHAPES:
        assert rows[name].scale == pytest.approx(expected_gsnr(name) / m, rel=2 * RTOL[torch.float32])


def test_torch_scale_report_equals_the_one_gradient_report():
    model = Constructed()
    live = torch_gsnr_report(model, constructed_loss)
    opt = SGDSaI(model.named_parameters())
    constructed_loss(model).backward()
    opt.step()
    for frozen in (torch_scale_report(opt), torch_scale_report(opt.state_dict())):
        # The optimizer and the report run the same sai_core statistic on the same gradient.
        assert [(r.name, r.gsnr, r.scale) for r in frozen.rows] == [(r.name, r.gsnr, r.scale) for r in live.rows]
        assert frozen.max_gsnr == live.max_gsnr and frozen.source == "checkpoint"


def _jax_params() -> dict[str, jax.Array]:
    params = {name: jnp.zeros(shape) for name, shape in SHAPES.items()}
    return {**params, "scalar": jnp.zeros(()), "unused": jnp.zeros(3)}


def _jax_loss(params: dict[str, jax.Array]) -> jax.Array:
    loss = sum(jnp.sum(params[name] * pattern(SHAPES[name], OFFSETS[name])) for name in SHAPES)
    return loss + 3.0 * params["scalar"]


def test_jax_report_numbers_on_constructed_gradients():
    report = jax_gsnr_report(_jax_params(), _jax_loss)
    rows = {row.name: row for row in report.rows}
    assert [row.name for row in report.rows] == sorted(_jax_params())  # jax.tree order of a dict
    for name, shape in SHAPES.items():
        assert rows[name].shape == shape
        assert rows[name].gsnr == pytest.approx(expected_gsnr(name), rel=JAX_RTOL)
        assert rows[name].ratio == pytest.approx(expected_gsnr(name) / math.sqrt(math.prod(shape) - 1), rel=JAX_RTOL)
    assert rows["scalar"].gsnr == 1.0
    # JAX has no absent gradient: an unused leaf gets zeros, which wait (SPEC: not informative).
    assert rows["unused"].gsnr is None and rows["unused"].note == "all-zero gradient: waits"


def test_jax_scale_report_equals_the_one_gradient_report():
    params = _jax_params()
    live = jax_gsnr_report(params, _jax_loss)
    opt = sgd_sai()
    _, state = opt.update(jax.grad(_jax_loss)(params), opt.init(params), params)
    frozen = jax_scale_report(state)
    assert [(r.name, r.gsnr) for r in frozen.rows] == [(r.name, r.gsnr) for r in live.rows]
    unused = next(row for row in frozen.rows if row.name == "unused")
    assert unused.gsnr is None and unused.note == "not initialized yet"  # still waiting in the state


def test_jax_report_refuses_a_vector_loss():
    with pytest.raises(
        ValueError, match=r"Invalid loss_fn: loss_fn\(params\) returned a value of shape \(3,\) and dtype float32"
    ):
        jax_gsnr_report({"w": jnp.ones(3)}, lambda p: p["w"] * 2)


def test_torch_report_refuses_a_vector_loss():
    with pytest.raises(ValueError, match=r"Invalid loss_fn: loss_fn\(model\) returned a tensor of shape \(2,\)"):
        torch_gsnr_report(torch.nn.Linear(2, 2), lambda m: m.weight.sum(0))


# -- the command line ------------------------------------------------------------------------


def _run_main(capsys, argv: list[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def unseen_module(tmp_path, monkeypatch):
    """A module file the CLI has never seen, importable from the current directory (as for `python -m`)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    names = []

    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)


TORCH_MODULE = """
    import torch
    import sys
    sys.path.insert(0, {tests!r})
    from test_gsnr import Constructed, constructed_loss

    def make():
        return Constructed(), constructed_loss
"""


def test_cli_on_an_unseen_torch_module(capsys, unseen_module):
    name = unseen_module(
        "unseen_torch_model", TORCH_MODULE.format(tests=str(__import__("pathlib").Path(__file__).parent))
    )
    code, out, err = _run_main(capsys, [f"{name}:make", "--json"])
    assert code == 0, err
    document = json.loads(out)
    rows = {row["name"]: row for row in document["rows"]}
    assert document["framework"] == "torch" and document["preset"] == "sgd-sai"
    for key in SHAPES:
        assert rows[key]["gsnr"] == pytest.approx(expected_gsnr(key), rel=RTOL[torch.float32])
        assert rows[key]["n"] == math.prod(SHAPES[key])
    code, out, _ = _run_main(capsys, [f"{name}:make", "--preset", "paper"])
    assert code == 0
    assert out.splitlines()[0].endswith("preset paper: S = G / M")
    assert any(line.startswith("matrix") and line.split()[-1] == "1" for line in out.splitlines())  # G / M = 1


def test_cli_on_an_unseen_jax_module_with_plot(capsys, unseen_module, tmp_path):
    name = unseen_module(
        "unseen_jax_model",
        """
        import jax.numpy as jnp

        def make():
            params = {"w": jnp.zeros((4, 4)), "b": jnp.zeros(4)}
            target = jnp.arange(16.0).reshape(4, 4)
            return params, lambda p: jnp.sum(p["w"] * target) + jnp.sum(p["b"] * jnp.array([1.0, -1.0, 1.0, -1.0]))
        """,
    )
    code, out, err = _run_main(capsys, [f"{name}:make", "--plot", str(tmp_path / "g.png")])
    assert code == 0, err
    b_line = next(line for line in out.splitlines() if line.startswith("b "))
    # +-1 over 4 elements: G = sqrt(n - 1) = sqrt(3) exactly, shown to 5 digits.
    assert b_line.split()[:4] == ["b", "(4,)", "4", "1.7321"]
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _torch_checkpoint(path, wrap: bool) -> SGDSaI:
    model = Constructed()
    opt = SGDSaI(model.named_parameters(), momentum=0.9)
    constructed_loss(model).backward()
    opt.step()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()} if wrap else opt.state_dict(), path)
    return opt


@pytest.mark.parametrize("wrap", [False, True], ids=["state_dict", "inside-a-dict"])
def test_cli_on_a_torch_checkpoint(capsys, tmp_path, wrap):
    path = tmp_path / "ckpt.pt"
    opt = _torch_checkpoint(path, wrap)
    code, out, err = _run_main(capsys, [str(path), "--json"])
    assert code == 0, err
    document = json.loads(out)
    want = torch_scale_report(opt.state_dict())  # a state dict records shapes only through buffers
    assert document["source"] == "checkpoint"
    assert [r.scale for r in want.rows] == [r.scale for r in torch_scale_report(opt).rows]
    assert [(r["name"], r["scale"], r["shape"]) for r in document["rows"]] == [
        (r.name, r.scale, None if r.shape is None else list(r.shape)) for r in want.rows
    ]


def test_cli_on_optax_states_saved_as_the_docs_show(capsys, tmp_path):
    # docs/jax.md: np.savez(f, *[np.asarray(leaf) for leaf in jax.tree.leaves(state)])
    params, grads = _jax_params(), jax.grad(_jax_loss)(_jax_params())
    optimizers = {
        "sgd_sai": sgd_sai(),
        "inject_hyperparams": optax.inject_hyperparams(sgd_sai)(learning_rate=1e-3),
        "momentum-0": sgd_sai(momentum=0.0),
    }
    for label, opt in optimizers.items():
        _, state = opt.update(grads, opt.init(params), params)
        path = tmp_path / f"{label}.npz"
        np.savez(path, *[np.asarray(leaf) for leaf in jax.tree.leaves(state)])
        code, out, err = _run_main(capsys, [str(path), "--json"])
        assert code == 0, (label, err)
        rows = json.loads(out)["rows"]
        want = jax_scale_report(state)
        assert [r["scale"] for r in rows] == [r.scale for r in want.rows], label
        shapes = [None if r["shape"] is None else tuple(r["shape"]) for r in rows]
        assert shapes == ([None] * len(rows) if label == "momentum-0" else [r.shape for r in want.rows]), label


@dataclasses.dataclass(frozen=True)
class BadInput:
    desc: str
    argv: list[str]
    message: str  # must appear in the one line on stderr


def _bad_files(tmp_path) -> dict[str, str]:
    model = torch.nn.Linear(3, 2)
    adamw = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    adamw.step()
    torch.save(adamw.state_dict(), tmp_path / "adamw.pt")
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    params = {"w": jnp.ones((2, 2))}
    np.savez(tmp_path / "adam.npz", *[np.asarray(x) for x in jax.tree.leaves(optax.adam(1e-3).init(params))])
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    sgd = _torch_checkpoint(tmp_path / "sgdsai.pt", wrap=False)
    del sgd
    return {name: str(tmp_path / name) for name in ("adamw.pt", "weights.pt", "adam.npz", "notes.txt", "sgdsai.pt")}


BAD_INPUTS = [
    BadInput("no such module", ["no_such_module_xyz:make"], "cannot import 'no_such_module_xyz'"),
    BadInput("no such function", ["{module}:nope"], "has no attribute 'nope'"),
    BadInput(
        "function returns an int", ["{module}:returns_int"], "returned builtins.int; expected a tuple (model, loss_fn)"
    ),
    BadInput("loss_fn is not callable", ["{module}:returns_pair_of_models"], "expected a tuple (model, loss_fn)"),
    BadInput(
        "model of no framework", ["{module}:returns_a_list"], "the model is a builtins.list; expected a torch.nn.Module"
    ),
    BadInput("function raises", ["{module}:raises"], "raised RuntimeError: broken data"),
    BadInput(
        "loss is not a scalar",
        ["{module}:vector_loss"],
        "Invalid loss_fn: loss_fn(model) returned a tensor of shape (2,)",
    ),
    BadInput(
        "neither file nor MODULE:FUNCTION", ["just_a_word"], "expected MODULE:FUNCTION or an existing checkpoint file"
    ),
    BadInput("torch AdamW checkpoint", ["{adamw.pt}"], "it is not an SGDSaI checkpoint (another optimizer's"),
    BadInput("torch weights, no optimizer", ["{weights.pt}"], "holds no optimizer state_dict"),
    BadInput("optax adam state", ["{adam.npz}"], "without an SGD-SaI state"),
    BadInput("a text file", ["{notes.txt}"], "is not a torch.save file, a .keras file or an .npz"),
    BadInput(
        "preset contradicting the checkpoint",
        ["{sgdsai.pt}", "--preset", "paper"],
        "Invalid --preset: 'paper' (the checkpoint was saved with preset 'sgd-sai'",
    ),
]

BAD_MODULE = """
    import torch

    def returns_int():
        return 3

    def returns_pair_of_models():
        return torch.nn.Linear(2, 2), torch.nn.Linear(2, 2).weight

    def returns_a_list():
        return [1.0, 2.0], lambda model: 0.0

    def raises():
        raise RuntimeError("broken data")

    def vector_loss():
        return torch.nn.Linear(2, 2), lambda m: m.weight.sum(0)
"""


@pytest.mark.parametrize("bad", BAD_INPUTS, ids=[b.desc for b in BAD_INPUTS])
def test_bad_input_is_one_line_and_exit_2(capsys, unseen_module, tmp_path, bad):
    module = unseen_module("bad_targets", BAD_MODULE)
    files = _bad_files(tmp_path)
    replacements = {"{module}": module, **{f"{{{name}}}": path for name, path in files.items()}}
    argv = []
    for arg in bad.argv:
        for placeholder, value in replacements.items():
            arg = arg.replace(placeholder, value)
        argv.append(arg)
    code, out, err = _run_main(capsys, argv)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("sai-gsnr: error: "), err
    assert bad.message in err, err


def test_console_script_imports_only_the_framework_it_needs(tmp_path):
    # A torch target must not import JAX or Keras; an optax .npz imports neither torch nor JAX.
    (tmp_path / "tiny_torch_target.py").write_text(
        "import torch\ndef make():\n    m = torch.nn.Linear(3, 2)\n    return m, lambda m: m(torch.ones(4, 3)).square().sum()\n"
    )
    params = {"w": jnp.ones((2, 2))}
    opt = sgd_sai()
    _, state = opt.update({"w": jnp.arange(4.0).reshape(2, 2)}, opt.init(params), params)
    np.savez(tmp_path / "state.npz", *[np.asarray(x) for x in jax.tree.leaves(state)])
    probe = (
        "import sys; from sai_gsnr._cli import main; code = main(sys.argv[1:]); "
        "print('@@', code, sorted(m for m in ('torch', 'jax', 'keras', 'tensorflow') if m in sys.modules))"
    )
    for argv, imported in ((["tiny_torch_target:make"], "['torch']"), ([str(tmp_path / "state.npz")], "[]")):
        done = subprocess.run(
            [sys.executable, "-c", probe, *argv], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert done.stdout.splitlines()[-1] == f"@@ 0 {imported}", done.stdout + done.stderr
