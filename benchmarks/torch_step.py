"""Step time, state and temporary memory of ``sai_torch.SGDSaI`` against torch's fused AdamW.

Usage::

    python benchmarks/torch_step.py            # the issue's sizes (GPT-2 small, 2,000 x 64x64)
    python benchmarks/torch_step.py --quick    # smaller sizes, under a minute

Every timed section interleaves its candidates (one step of each, in rotating order, per round) so
that load from other processes hits all of them alike, and reports the median over ``--steps``
steady steps (after warm-up steps that initialize state and compile the fused kernel). Ratios are
printed with the target each must meet:

* GPT-2-small-shaped parameters (124M parameters, 148 tensors): default path <= 1.0x
  ``torch.optim.AdamW(fused=True)``; ``fused=True`` <= 0.8x and >= 80% of the in-place memory
  bandwidth, measured as an in-place scale of one buffer of the same total size (a step reads
  ``p, g, m`` and writes ``p, m``: 2.5 times the scale's traffic).
* 2,000 tensors of 64x64 (overhead-bound): default path <= 0.6x ``sgd_sai.SGD_sai`` 1.0.3.
* Optimizer state: parameter bytes + at most 16 B per tensor (8 B per Python float ``scale`` and
  ``max_gsnr``), at most 16 B per tensor with ``momentum=0``.
* Memory allocated inside ``step()`` (torch profiler, CPU allocations): a steady step allocates
  at most the largest single parameter (no whole-model temporaries); the first step's peak, state
  included, is at most 50% of AdamW's first step.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from sai_torch import SGDSaI

MiB = 1 << 20

# What --json writes: every number the sections print, keyed by section (benchmarks/report.py reads it).
RESULTS: dict[str, Any] = {}


def gpt2_shapes(layers: int, d_model: int, vocab: int, context: int) -> list[tuple[int, ...]]:
    """Parameter shapes of GPT-2 (Hugging Face layout): 2 + 12 per layer + 2 tensors."""
    shapes: list[tuple[int, ...]] = [(vocab, d_model), (context, d_model)]
    for _ in range(layers):
        shapes += [
            (d_model,),
            (d_model,),  # ln_1
            (d_model, 3 * d_model),
            (3 * d_model,),  # attn.c_attn
            (d_model, d_model),
            (d_model,),  # attn.c_proj
            (d_model,),
            (d_model,),  # ln_2
            (d_model, 4 * d_model),
            (4 * d_model,),  # mlp.c_fc
            (4 * d_model, d_model),
            (d_model,),  # mlp.c_proj
        ]
    shapes += [(d_model,), (d_model,)]  # ln_f
    return shapes


def make_params(shapes: list[tuple[int, ...]], seed: int = 0, device: str = "cpu") -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter((0.02 * torch.randn(shape, generator=generator)).to(device))
        p.grad = torch.randn(shape, generator=generator).to(device)
        params.append(p)
    return params


def _synchronize() -> None:
    # CUDA kernels run asynchronously: a step's time ends when the device has finished it.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def quiet_step(opt: torch.optim.Optimizer) -> Callable[[], Any]:
    # sgd_sai.SGD_sai prints a banner at its first step.
    def step() -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            opt.step()

    return step


def interleaved_medians(candidates: dict[str, Callable[[], Any]], steps: int, warmup: int) -> dict[str, float]:
    """Median seconds per call, candidates interleaved in rotating order."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    names = list(candidates)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(steps):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in order:
            _synchronize()
            started = time.perf_counter()
            candidates[name]()
            _synchronize()
            samples[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in samples.items()}


def state_bytes(opt: torch.optim.Optimizer) -> int:
    """Tensor bytes in the optimizer state, plus 8 B per Python number (its float64 payload)."""
    total = 0
    for entry in opt.state.values():
        for value in entry.values():
            if isinstance(value, torch.Tensor):
                total += value.numel() * value.element_size()
            elif isinstance(value, (int, float)):
                total += 8
    return total


def peak_allocation(fn: Callable[[], Any]) -> tuple[int, int]:
    """(peak, kept): the most CPU memory allocated at once while ``fn`` runs, and what it still
    holds at the end (state it created); both counted from the start of ``fn``."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    points = []
    for event in prof.events():
        # Allocations inside an op are attributed to it (self usage); "[memory]" events are the
        # allocations and frees outside any op.
        usage = event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        if usage:
            points.append((event.time_range.start, usage))
    points.sort()
    current = peak = 0
    for _, usage in points:
        current += usage
        peak = max(peak, current)
    return peak, current


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def run_large(args: argparse.Namespace) -> None:
    shapes = gpt2_shapes(args.layers, args.d_model, args.vocab, args.context)
    params = make_params(shapes, device=args.device)
    numel = sum(p.numel() for p in params)
    param_bytes = numel * 4
    largest = max(p.numel() for p in params) * 4
    print(f"\n== GPT-2-shaped parameter set: {len(params)} tensors, {numel / 1e6:.1f}M parameters (float32) ==")
    adamw = torch.optim.AdamW(params, lr=1e-3, fused=True)
    default = SGDSaI(params)
    candidates: dict[str, Callable[[], Any]] = {
        "AdamW(fused=True)": adamw.step,
        "SGDSaI default": default.step,
    }
    fused = None
    if not args.no_fused:
        fused = SGDSaI(params, fused=True)
        candidates["SGDSaI fused=True"] = fused.step
    if not args.no_port:
        import sgd_sai

        port = sgd_sai.SGD_sai(params)
        candidates["sgd_sai.SGD_sai 1.0.3"] = quiet_step(port)
    scale_buffer = torch.randn(numel, device=args.device)
    factors = [2.0, 0.5]  # alternate so that the values stay where they are

    def inplace_scale() -> None:
        factors.reverse()
        scale_buffer.mul_(factors[0])

    candidates["in-place scale (bandwidth)"] = inplace_scale
    medians = interleaved_medians(candidates, args.steps, args.warmup)
    large = RESULTS["large"] = {
        "tensors": len(params),
        "numel": numel,
        "param_bytes": param_bytes,
        "medians_s": medians,
    }
    reference = medians["AdamW(fused=True)"]
    scale_time = medians["in-place scale (bandwidth)"]
    print(f"{'candidate':<30} {'median ms':>10} {'x AdamW fused':>14}")
    for name, seconds in medians.items():
        print(f"{name:<30} {seconds * 1e3:>10.2f} {seconds / reference:>14.3f}")
    bandwidth = 2 * param_bytes / scale_time
    print(f"in-place bandwidth: {bandwidth / 1e9:.1f} GB/s (read + write of {param_bytes / MiB:.0f} MiB)")
    ratio = medians["SGDSaI default"] / reference
    print(f"target default <= 1.0x AdamW fused: {ratio:.3f}x  {verdict(ratio <= 1.0)}")
    if fused is not None:
        ratio = medians["SGDSaI fused=True"] / reference
        fraction = 2.5 * scale_time / medians["SGDSaI fused=True"]
        print(f"target fused <= 0.8x AdamW fused: {ratio:.3f}x  {verdict(ratio <= 0.8)}")
        print(f"target fused >= 80% of in-place bandwidth: {100 * fraction:.0f}%  {verdict(fraction >= 0.8)}")
    default_fraction = 2.5 * scale_time / medians["SGDSaI default"]
    print(f"(default path: {100 * default_fraction:.0f}% of in-place bandwidth)")
    if args.no_memory:
        return

    print("\n-- optimizer state --")
    adam_state = state_bytes(adamw)
    sai_state = state_bytes(default)
    large.update(adamw_state_bytes=adam_state, sai_state_bytes=sai_state)
    per_tensor = (sai_state - param_bytes) / len(params)
    print(f"AdamW:  {adam_state / MiB:9.1f} MiB")
    print(
        f"SGDSaI: {sai_state / MiB:9.1f} MiB = parameters + {per_tensor:.0f} B/tensor "
        f"({100 * sai_state / adam_state:.1f}% of AdamW)  {verdict(per_tensor <= 16)}"
    )
    no_momentum = SGDSaI(params, momentum=0.0)
    no_momentum.step()
    per_tensor = state_bytes(no_momentum) / len(params)
    print(f"SGDSaI momentum=0: {per_tensor:.0f} B/tensor  {verdict(per_tensor <= 16)}")
    del no_momentum

    print("\n-- memory allocated inside step() (torch profiler, CPU allocator) --")
    print(f"largest parameter: {largest / MiB:.1f} MiB; whole model: {param_bytes / MiB:.1f} MiB")
    print(f"{'':<34} {'peak MiB':>9} {'kept MiB':>9}")

    def row(name: str, fn: Callable[[], Any]) -> tuple[int, int]:
        peak, kept = peak_allocation(fn)
        print(f"{name:<34} {peak / MiB:>9.2f} {kept / MiB:>9.2f}")
        return peak, kept

    sai_first, _ = row("SGDSaI default, first step", SGDSaI(params).step)
    adam_first, _ = row("AdamW(fused=True), first step", torch.optim.AdamW(params, lr=1e-3, fused=True).step)
    steady, _ = row("SGDSaI default, steady step", default.step)
    if fused is not None:
        steady = max(steady, row("SGDSaI fused=True, steady step", fused.step)[0])
    row("AdamW(fused=True), steady step", adamw.step)
    from sai_core import resolve_config
    from sai_torch._gsnr import initial_scales

    grads = [p.grad for p in params]
    gsnr_peak, _ = row(
        "  of a first step: the g-SNR pass",
        lambda: initial_scales(grads, [1e-8] * len(grads), max_gsnr=None, config=resolve_config()),
    )
    ratio = sai_first / adam_first
    large.update(sai_first_peak_bytes=sai_first, adamw_first_peak_bytes=adam_first, steady_peak_bytes=steady)
    print(f"target first-step peak <= 50% of AdamW's: {100 * ratio:.1f}%  {verdict(ratio <= 0.5 + 1e-3)}")
    print(f"target steady-step temporaries <= largest parameter: {steady / MiB:.2f} MiB  {verdict(steady <= largest)}")
    print(
        f"(the g-SNR pass, sai_core.raw_gsnr on each tensor in turn, peaks at {gsnr_peak / largest:.1f}x the "
        "largest parameter and frees it before the buffers are created)"
    )


def run_small(args: argparse.Namespace) -> None:
    shapes = [(args.small_side, args.small_side)] * args.small_count
    params = make_params(shapes, seed=1, device=args.device)
    print(f"\n== {args.small_count} tensors of {args.small_side}x{args.small_side} (overhead-bound) ==")
    candidates: dict[str, Callable[[], Any]] = {"SGDSaI default": SGDSaI(params).step}
    if not args.no_port:
        import sgd_sai

        candidates["sgd_sai.SGD_sai 1.0.3"] = quiet_step(sgd_sai.SGD_sai(params))
    candidates["AdamW(fused=True)"] = torch.optim.AdamW(params, lr=1e-3, fused=True).step
    medians = interleaved_medians(candidates, args.steps, args.warmup)
    RESULTS["small"] = {"tensors": args.small_count, "side": args.small_side, "medians_s": medians}
    for name, seconds in medians.items():
        print(f"{name:<30} {seconds * 1e3:>10.2f} ms")
    if not args.no_port:
        ratio = medians["SGDSaI default"] / medians["sgd_sai.SGD_sai 1.0.3"]
        print(f"target default <= 0.6x sgd_sai.SGD_sai: {ratio:.3f}x  {verdict(ratio <= 0.6)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 layers, vocab 8192, 500 small tensors")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--small-count", type=int, default=2000)
    parser.add_argument("--small-side", type=int, default=64)
    parser.add_argument("--steps", type=int, default=9, help="timed steady steps per candidate (>= 7)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per candidate first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-fused", action="store_true", help="skip the compiled path")
    parser.add_argument("--no-port", action="store_true", help="skip sgd_sai.SGD_sai")
    parser.add_argument("--only", choices=("large", "small"), help="run one section")
    parser.add_argument("--device", default="cpu", help="torch device of the parameters (e.g. cuda)")
    parser.add_argument("--no-memory", action="store_true", help="skip the state and allocation sections")
    parser.add_argument("--json", metavar="FILE", help="also write every measured number as JSON")
    args = parser.parse_args(argv)
    if args.steps < 7:
        parser.error("--steps must be at least 7 (medians of at least 7 steady steps)")
    if args.quick:
        args.layers, args.vocab, args.small_count = 4, 8192, 500
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} timed steps per candidate")
    if args.quick:
        print("--quick: reduced sizes, where fixed per-step costs weigh more; the targets are for the full sizes")
    if args.only in (None, "large"):
        run_large(args)
    if args.only in (None, "small"):
        run_small(args)
    if args.json:
        RESULTS["meta"] = {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": str(args.device),
            "steps": args.steps,
            "quick": args.quick,
        }
        with open(args.json, "w") as out:
            json.dump(RESULTS, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
