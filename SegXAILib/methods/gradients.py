"""Gradient baselines through Captum (saliency, Integrated Gradients, Grad-CAM) and occlusion — fast first looks,
and a yardstick for the perturbation methods.

The explained scalar is the target's logit (or probability) summed over the ROI voxels of the *fused* sliding-window
output. The fusion is linear in the window outputs, fused(v) = Σ_t w_t(v) z_t(v) / Σ_t w_t(v), so the scalar is a
sum over the windows that overlap the ROI of their outputs weighted by w_t / Σ w. It is built here as one
differentiable function of the whole image (padded and cut into windows exactly as the evaluator does), so its
gradient is that of full-volume sliding-window inference, and input outside the receptive-field support gets exactly
zero. With several windows each is checkpointed: memory holds one window's activations at a time.
Grad-CAM needs a layer's activations, so it runs per window on that window's share of the scalar (linearised at the
input, which is exact for a gradient), each map upsampled onto its window; the maps are summed, then ReLU. On one
window this is Captum's LayerGradCam.
Occlusion removes one region player at a time on the evaluator: v_full − v(all but i), on the run's value function.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..errors import InputError, ModelError
from ..evaluator import Evaluator
from ..players import support_box
from ..progress import CancelToken, ProgressFn, no_progress
from ..targets import Target, parse_target
from ..values import value_function
from .base import ExplainInputs, MethodResult, baseline_values, check_finite, execution_order, model_case, module_type
from .contrast_shapley import _references
from .region_shap import global_mask_players, map_players, region_maps, region_players

NAME = "gradients"
KINDS = ("saliency", "integrated-gradients", "grad-cam", "occlusion")
OUTPUTS = ("logit", "prob")


def roi_output(logits: torch.Tensor, target: Target, output: str) -> torch.Tensor:
    """(B, K, R) fused logits at the ROI voxels → (B,) the target's logit or probability summed over the ROI."""
    channels = list(target.channels)
    if output == "logit":
        return logits[:, channels].sum((1, 2))
    if target.activation == "sigmoid":
        return torch.sigmoid(logits[:, channels[0]]).sum(1)
    return torch.softmax(logits, 1)[:, channels].sum((1, 2))


def _output_value(logits, target, ref, output: str) -> float:
    return float(roi_output(logits[None].double(), target, output)[0])


# The scalars the gradient kinds explain, as value functions (logits, target, reference) -> float for the evaluator.
VALUES = {f"roi-{o}-sum": functools.partial(_output_value, output=o) for o in OUTPUTS}


def differentiable_forward(model):
    """The model's window forward with autograd on: nnU-Net's runs under torch.inference_mode, whose undecorated
    function functools.wraps keeps as __wrapped__."""
    inner = getattr(getattr(model.forward, "__func__", None), "__wrapped__", None)
    return inner.__get__(model.forward.__self__) if inner is not None else model.forward


class FusedRoiOutput:
    """x (B, C, *image) → (B,) the explained scalar of fused sliding-window inference, differentiable in x."""

    def __init__(self, model, evaluator: Evaluator, target: Target, output: str):
        device = evaluator.device
        self.forward, self.target, self.output = differentiable_forward(model), target, output
        self.pad = [p for pair in reversed(evaluator.grid.pad) for p in pair]
        self.crop = [evaluator.grid.slices(w) for w in evaluator.windows]
        self.local = [t.to(device) for t in evaluator.local]
        self.ridx = [t.to(device) for t in evaluator.ridx]
        self.share = [(w / evaluator.norm[r]).float().to(device) for w, r in zip(evaluator.weight, evaluator.ridx)]
        self.n_roi, self.per_pass = evaluator.n_roi, evaluator.batch_size

    def chunks(self, batch: int) -> list[list[int]]:
        """Windows in groups that fit one forward pass for a batch of `batch` images."""
        size = max(1, self.per_pass // batch)
        return [list(range(a, min(a + size, len(self.crop)))) for a in range(0, len(self.crop), size)]

    def crops(self, padded: torch.Tensor, chunk: list[int]) -> torch.Tensor:
        return torch.cat([padded[(slice(None), slice(None)) + self.crop[i]] for i in chunk])

    def shares(self, crops: torch.Tensor, chunk: list[int]) -> torch.Tensor:
        """Crops of windows `chunk` (window-major, B each) → their weighted outputs at the ROI voxels, (n, B, K, R)."""
        z = self.forward(crops)
        z = z[0] if isinstance(z, (list, tuple)) else z
        if torch.is_grad_enabled() and not z.requires_grad:
            raise ModelError("This model's forward pass does not let gradients through.",
                             "Use a perturbation method: --gradient occlusion, --method region-shap or contrast-shapley.")
        z = z.float().flatten(2)
        z = z.view(len(chunk), -1, *z.shape[1:])
        return torch.stack([z.new_zeros(z.shape[1:3] + (self.n_roi,)).index_add(2, self.ridx[i], z[j][:, :, self.local[i]] * self.share[i])
                            for j, i in enumerate(chunk)])

    def fused_part(self, padded: torch.Tensor, chunk: list[int]) -> torch.Tensor:
        return self.shares(self.crops(padded, chunk), chunk).sum(0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        padded = F.pad(x, self.pad)
        chunks = self.chunks(x.shape[0])
        fused = 0
        for chunk in chunks:
            run = functools.partial(self.fused_part, chunk=chunk)
            fused = fused + (checkpoint(run, padded, use_reentrant=False) if len(chunks) > 1 else run(padded))
        return roi_output(fused, self.target, self.output)

    def unpad(self, volume: torch.Tensor) -> torch.Tensor:
        """A padded-grid volume (..., *padded) cut back to the image grid."""
        pad = self.pad[::-1]
        cut = tuple(slice(pad[2 * d + 1], volume.shape[-3 + d] - pad[2 * d]) for d in range(3))
        return volume[(Ellipsis,) + cut]


def gradcam_layer(module: torch.nn.Module, name: str | None, probe) -> tuple[str, torch.nn.Module]:
    """The named layer, or by default the last Conv3d to run before the head (the only one, if just one), found by
    running `probe()`."""
    if isinstance(module, torch.jit.ScriptModule):
        raise InputError("Grad-CAM needs a forward hook on a layer, which TorchScript modules do not take.",
                         "Use saliency or integrated-gradients, or give the model as a MONAI bundle or --factory with its state dict.")
    named = dict(module.named_modules())
    convs = [n for n, m in named.items() if module_type(m) in ("Conv3d", "ConvTranspose3d")]
    if name is not None and name not in named:
        raise InputError(f"The model has no layer {name!r}.", f"Choose --gradcam-layer among its convolutions: {', '.join(convs[-8:])}.")
    if name is None:
        if not convs:
            raise InputError("The model has no Conv3d layer for Grad-CAM.", "Name a layer with --gradcam-layer.")
        order = execution_order(named, convs, probe)
        name = order[-2] if len(order) > 1 else order[-1]
    return name, named[name]


def grad_cam(fused: FusedRoiOutput, x: torch.Tensor, layer: torch.nn.Module, output_grad: torch.Tensor) -> torch.Tensor:
    """Per window Captum's LayerGradCam of its share Σ G·z (G = ∂scalar/∂fused logits at x), upsampled, summed, ReLU."""
    from captum.attr import LayerAttribution, LayerGradCam

    calls = []
    hook = layer.register_forward_hook(lambda *_: calls.append(1))
    padded = F.pad(x, fused.pad)
    cam = torch.zeros(padded.shape[2:], device=x.device)
    try:
        for chunk in fused.chunks(1):
            calls.clear()

            def per_window(crops, chunk=chunk):   # (n,) each window's share of the scalar, linearised at x
                return (fused.shares(crops, chunk) * output_grad).sum((2, 3)).flatten()

            maps = LayerGradCam(per_window, layer).attribute(fused.crops(padded, chunk), relu_attributions=False)
            if len(calls) != 1:
                raise InputError(f"The Grad-CAM layer runs {len(calls)} times per forward pass (test-time mirroring, or a shared layer).",
                                 "Pass --no-mirroring, or choose another --gradcam-layer.")
            for j, i in enumerate(chunk):
                window = cam[fused.crop[i]]
                window += LayerAttribution.interpolate(maps[j:j + 1], tuple(window.shape), "trilinear")[0, 0].detach()
    finally:
        hook.remove()
    return torch.relu(fused.unpad(cam))[None, None]


def attribute(kind: str, model, evaluator: Evaluator, image: np.ndarray, target: Target, output: str, baseline: np.ndarray,
              n_steps: int = 32, layer: str | None = None) -> tuple[np.ndarray, dict]:
    """(C, *image) attributions (Grad-CAM: (1, *image)) on the model grid, and what the method reports about itself."""
    from captum.attr import IntegratedGradients, Saliency

    fused = FusedRoiOutput(model, evaluator, target, output)
    device = evaluator.device
    x = torch.from_numpy(image)[None].to(device)
    info: dict = {}
    with torch.enable_grad():
        if kind == "saliency":
            attr = Saliency(fused).attribute(x.requires_grad_(), abs=False).abs()   # |Σ over windows|, not Σ |window gradient|
        elif kind == "integrated-gradients":
            base = torch.from_numpy(np.broadcast_to(baseline, image.shape).copy())[None].to(device)
            attr, delta = IntegratedGradients(fused).attribute(x, baselines=base, n_steps=n_steps, return_convergence_delta=True,
                                                              internal_batch_size=max(1, evaluator.batch_size // 2))
            info = {"n_steps": n_steps, "completeness_gap": float(delta.abs().max())}
        elif kind == "grad-cam":
            name, module = gradcam_layer(model.module, layer, lambda: fused.forward(fused.crops(F.pad(x, fused.pad), [0])))
            z = evaluator.full_logits()[None].to(device).requires_grad_(True)
            grad, = torch.autograd.grad(roi_output(z, target, output).sum(), z)
            attr = grad_cam(fused, x, module, grad)
            info = {"layer": name}
        else:
            raise InputError(f"Unknown gradient method {kind!r}.", f"Choose --gradient {' | '.join(KINDS)}.")
    return attr.detach()[0].cpu().numpy().astype(np.float32), info


def value_game(inputs: ExplainInputs, model, mc, ids: np.ndarray, n: int, value: str, target_spec: str, progress, cancel):
    """The model's evaluator over the given players, its target, and the value function bound to its reference
    (the model's own prediction unless a reference was given) — shared with `segxai evaluate`."""
    request = inputs.request
    evaluator = Evaluator(model, mc.prepared.image, mc.roi, ids, n, baseline_values(mc.prepared.image, request.baseline),
                          inputs.device, batch_size=request.batch_size, progress=progress, cancel=cancel)
    full = evaluator.full_logits()
    check_finite(full, model.name)
    target = parse_target(target_spec, model.labels, model.activation, full.shape[0], model.regions)
    if value in VALUES:
        return evaluator, target, functools.partial(VALUES[value], target=target, ref=None)
    ref, = _references([target], full, mc.reference[mc.roi] if mc.reference is not None else None, value, model.name)
    return evaluator, target, functools.partial(value_function(value), target=target, ref=ref)


def explain(inputs: ExplainInputs, progress: ProgressFn = no_progress, cancel: CancelToken | None = None) -> list[MethodResult]:
    options = inputs.request.gradients
    if options.kind not in KINDS:
        raise InputError(f"Unknown gradient method {options.kind!r}.", f"Choose --gradient {' | '.join(KINDS)}.")
    if len(inputs.request.targets) != 1:
        raise InputError("Gradient methods explain one target per run.", "Give one --target-label (run again for another).")
    if options.output not in OUTPUTS:
        raise InputError(f"Unknown gradient output {options.output!r}.", f"Choose --gradient-output {' or '.join(OUTPUTS)}.")
    return [_occlusion(inputs, progress, cancel) if options.kind == "occlusion" else _gradients(inputs, progress, cancel)]


def _gradients(inputs: ExplainInputs, progress, cancel) -> MethodResult:
    request, case, options = inputs.request, inputs.case, inputs.request.gradients
    value = f"roi-{options.output}-sum"
    maps, per_model, stats, info, target, first_box = None, [], [], {}, None, None
    for m, model in enumerate(inputs.models):
        mc = model_case(model, inputs)
        n = case.n_channels
        evaluator, target, vf = value_game(inputs, model, mc, np.arange(n).reshape(n, 1, 1, 1), n, value, request.targets[0],
                                           progress, cancel)
        progress(0, 1, f"{options.kind}, {model.name} [{m + 1}/{len(inputs.models)}]")
        attr, info = attribute(options.kind, model, evaluator, mc.prepared.image, target, options.output,
                               baseline_values(mc.prepared.image, request.baseline), options.n_steps, options.layer)
        v_full, v_empty = evaluator.evaluate(np.array([[True] * n, [False] * n]), lambda z: [vf(z)])[:, 0]
        box = support_box(evaluator.grid, mc.roi)
        first_box = first_box or box
        per_model.append({"model": model.name, "values": attr[(slice(None),) + box].sum((1, 2, 3)).tolist(),
                          "v_full": float(v_full), "v_empty": float(v_empty), **info})
        grids = np.stack([mc.to_case_volume(a, case.geometry, order=0) for a in attr])
        maps = grids if maps is None else maps + grids
        stats.append({"model": model.name, **evaluator.stats.to_json()})
        progress(1, 1, f"{options.kind}, {model.name} [{m + 1}/{len(inputs.models)}]")
    maps /= len(inputs.models)
    names = case.channel_names if options.kind != "grad-cam" else [f"layer {info['layer']}"]
    values = np.array([p["values"] for p in per_model])
    mean = values.mean(0)
    players = [{"id": c, "name": names[c], "value": float(mean[c]), "per_model": values[:, c].tolist()} for c in range(len(names))]
    result = {
        "method": NAME, "value_function": value, "target_label": target.name, "target": target.to_json(),
        "players": players, "ranking": [names[c] for c in np.argsort(-mean, kind="stable")],
        "v_empty": float(np.mean([p["v_empty"] for p in per_model])), "v_full": float(np.mean([p["v_full"] for p in per_model])),
        "gradient": {"kind": options.kind, "output": options.output, "signed": options.kind == "integrated-gradients",
                     "support_box": [[s.start, s.stop] for s in first_box], **{k: v for k, v in info.items() if k == "layer"}},
        "per_model": per_model, "baseline": request.baseline, "roi_voxels": int(inputs.roi.sum()),
    }
    out = {"attribution": (maps.sum(0).astype(np.float32), case.geometry), "roi": (inputs.roi.astype(np.uint8), case.geometry)}
    if options.per_channel and options.kind != "grad-cam":
        out.update({f"attribution_{_safe(names[c])}": (maps[c].astype(np.float32), case.geometry) for c in range(len(names))})
    return MethodResult(target.name, result, out, stats)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


def _occlusion(inputs: ExplainInputs, progress, cancel) -> MethodResult:
    request, region = inputs.request, inputs.request.region
    first, players = region_players(inputs)
    n = players.n
    coalitions = np.concatenate([np.ones((1, n), bool), ~np.eye(n, dtype=bool), np.zeros((1, n), bool)])
    per_model, stats, target = [], [], None
    for m, model in enumerate(inputs.models):
        mc = first if m == 0 else model_case(model, inputs)
        ids = players.ids if m == 0 else map_players(players.ids, first, mc)
        evaluator, target, vf = value_game(inputs, model, mc, ids[None], n, request.value, request.targets[0], progress, cancel)
        v = evaluator.evaluate(coalitions, lambda z: [vf(z)], stage=f"occlusion, {model.name} [{m + 1}/{len(inputs.models)}]")[:, 0]
        per_model.append({"model": model.name, "values": (v[0] - v[1:-1]).tolist(), "v_full": float(v[0]), "v_empty": float(v[-1])})
        stats.append({"model": model.name, **evaluator.stats.to_json()})
    values = np.array([p["values"] for p in per_model])
    mean = values.mean(0)
    voxel_ml = float(np.prod(first.prepared.geometry.spacing)) / 1000.0
    volumes = players.volumes()
    chosen = global_mask_players(mean, region.mask_share)
    entries = [{"id": i, "name": players.names[i], "value": float(mean[i]), "per_model": values[:, i].tolist(),
                "volume_ml": float(volumes[i] * voxel_ml), "organ_label": players.organ[i]} for i in range(n)]
    result = {
        "method": NAME, "value_function": request.value, "target_label": target.name, "target": target.to_json(),
        "players": entries, "ranking": [players.names[i] for i in np.argsort(-mean, kind="stable")],
        "v_empty": float(np.mean([p["v_empty"] for p in per_model])), "v_full": float(np.mean([p["v_full"] for p in per_model])),
        "gradient": {"kind": "occlusion", "signed": True, "value": "v_full − v(all players but one)"},
        "features": {"kind": players.kind, "n_players": n, "n_players_requested": region.n_players, "cell_mm": region.cell_mm},
        "global_mask": {"share": region.mask_share, "players": [players.names[i] for i in chosen], "ids": chosen},
        "per_model": per_model, "baseline": request.baseline, "roi_voxels": int(inputs.roi.sum()),
        "reference_source": "file" if inputs.reference is not None else "model prediction",
    }
    return MethodResult(target.name, result, region_maps(inputs, first, players, mean, chosen), stats)
