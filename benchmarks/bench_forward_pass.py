"""Forward-pass variants on CPU, side by side in one process: which are faster and keep today's logits (≤ 1e-4).

    python benchmarks/bench_forward_pass.py [--repeats 5] [--compile] [--json PATH]

Models: the shipped demo brain UNet (MONAI bundle, eager, 64³ windows), the demo CT model (TorchScript), and
random-weight MONAI SegResNet and UNet (eager, 96³ / 64³ windows). Variants, each against the plain `inference_mode`
forward on the same batch: `no_grad` instead of `inference_mode`; `channels_last_3d` inputs and weights; one thread
instead of all; `torch.jit.freeze` + `optimize_for_inference` (TorchScript or traced); `torch.compile` (eager modules,
with `--compile`; its first call, the compilation, is printed). Timings interleave the variants round by round and
report the median, so a machine shared with other jobs slows all variants alike. Nothing here changes the game: float32
throughout, normalisation statistics computed per window as the model does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import torch
from monai.networks.nets import SegResNet, UNet

from SegXAILib.demo.run_demo import demo_models
from SegXAILib.models import ModelOptions, load_models

warnings.filterwarnings("ignore")
TOLERANCE = 1e-4


def _frozen(module: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    scripted = module if isinstance(module, torch.jit.ScriptModule) else torch.jit.trace(module, x)
    return torch.jit.optimize_for_inference(torch.jit.freeze(scripted.eval()))


def variants(module: torch.nn.Module, x: torch.Tensor, compile_: bool) -> dict:
    """name -> zero-argument callable returning logits for the batch x."""
    threads = torch.get_num_threads()

    def plain():
        with torch.inference_mode():
            return module(x)

    def no_grad():
        with torch.no_grad():
            return module(x)

    cl_module = None

    def channels_last():
        nonlocal cl_module
        if cl_module is None:
            cl_module = module.to(memory_format=torch.channels_last_3d) if not isinstance(module, torch.jit.ScriptModule) else module
        with torch.inference_mode():
            out = cl_module(x.contiguous(memory_format=torch.channels_last_3d))
        return out.contiguous()

    def one_thread():
        torch.set_num_threads(1)
        try:
            return plain()
        finally:
            torch.set_num_threads(threads)

    with torch.no_grad():
        frozen = _frozen(module, x)

    def freeze():
        with torch.inference_mode():
            return frozen(x)

    out = {"inference_mode (today)": plain, "no_grad": no_grad, "channels_last_3d": channels_last, "1 thread": one_thread,
           "jit.freeze + optimize_for_inference": freeze}
    if compile_ and not isinstance(module, torch.jit.ScriptModule):
        compiled = torch.compile(module)

        def compiled_fn():
            with torch.inference_mode():
                return compiled(x)
        out["torch.compile"] = compiled_fn
    return out


def measure(name: str, module: torch.nn.Module, x: torch.Tensor, repeats: int, compile_: bool) -> list[dict]:
    fns = variants(module.eval(), x, compile_)
    reference = fns["inference_mode (today)"]().float()
    rows, times = {}, {k: [] for k in fns}
    for k, fn in fns.items():                                   # warm-up (and compilation), and the logits check
        t0 = time.perf_counter()
        diff = float((fn().float() - reference).abs().max())
        rows[k] = {"model": name, "variant": k, "max_abs_diff": diff, "within_tolerance": diff <= TOLERANCE,
                   "first_call_s": time.perf_counter() - t0}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    base = statistics.median(times["inference_mode (today)"])
    for k in fns:
        rows[k]["median_s"] = statistics.median(times[k])
        rows[k]["speedup"] = base / rows[k]["median_s"]
        r = rows[k]
        print(f"  {name:38s} {k:36s} {r['median_s']:7.3f} s  {r['speedup']:5.2f}x  first call {r['first_call_s']:6.1f} s  "
              f"max|Δ| {r['max_abs_diff']:.1e}"
              f"{'' if r['within_tolerance'] else '  (over 1e-4: not adoptable)'}", flush=True)
    return list(rows.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (minutes of compilation)")
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.manual_seed(0)
    demo, ct = load_models([demo_models()[0], demo_models()[0].parent / "ct_liver.ts"], ModelOptions(trust=True))
    cases = [("demo brain UNet (MONAI bundle, eager)", demo.module, (4, *demo.window.size)),
             ("demo CT model (TorchScript)", ct.module, (1, *ct.window.size)),
             ("MONAI SegResNet (eager, 96³)", SegResNet(spatial_dims=3, in_channels=4, out_channels=4, init_filters=8), (4, 96, 96, 96)),
             ("MONAI UNet (eager, 64³)", UNet(3, 4, 4, (16, 32, 64, 128), (2, 2, 2), num_res_units=2, norm="instance"), (4, 64, 64, 64))]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, median of {args.repeats}")
    rows = []
    for name, module, shape in cases:
        rows += measure(name, module, torch.randn(args.batch, *shape), args.repeats, args.compile)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
