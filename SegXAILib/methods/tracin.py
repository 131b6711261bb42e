"""TracIn for segmentation (after Torda et al., "Influence based explainability of brain tumors segmentation in
multimodal MRI", and Pruthi et al. 2020): which training cases raised or lowered the loss of this case's
segmentation inside the ROI.

    score(z) = Σ_k η_k ⟨∇_θ L_test(θ_k), ∇_θ L_z(θ_k)⟩

over the saved checkpoints θ_k with their learning rates η_k, for the chosen parameter tensors θ (default: the
network's last convolution, weight and bias). Both losses are the class- / region-specific soft-Dice loss
L = 1 − (2 Σ p·r + ε) / (Σ p + Σ r + ε) (ε = 1e-5, as MONAI's DiceLoss) of the target (a label, a label set such
as BraTS WT, or a sigmoid channel):
- L_test over the ROI voxels of the case, from the fused sliding-window output (the very windows and weights of
  inference), against the reference: the model's own prediction at its final weights, or --reference;
- L_z over the training case z against its ground-truth labels: by default on one window-sized crop centred on the
  target in z (what a patch-trained network sees of a case; `train_region="crop"`), or on the whole case through
  the sliding windows (`"full"`). With `patches=g` each crop (or case) is also cut into a g×g×g grid and each
  patch's own loss gets a score: which part of the training case carries the influence.
A positive score means a gradient step on z lowered the test loss (a proponent); a negative one raised it (an
opponent). self_influence(z) = Σ_k η_k ‖∇L_z(θ_k)‖² is large for cases the model found hard to fit — mislabelled
cases rank high.

Per-sample gradients: training cases go through the network in batches with `torch.func` (functional_call +
jacrev, vmapped over the cases), which handles Conv3d (Captum's per-sample helper does only Linear and Conv2d);
models torch.func cannot call (TorchScript) and whole-case losses run one case at a time with plain autograd.
Random projection (Johnson–Lindenstrauss): gradients of D parameters are mapped by a seeded Gaussian matrix
(d × D, entries N(0, 1/d)) before the inner products; by default only when D > 16384 (then d = 2048).
The learning rates make the sum approximate Σ over training steps; with Adam-type optimisers TracIn is, as in the
papers, a first-order heuristic.
"""

from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError, ModelError
from ..progress import CancelToken, ProgressFn, check_cancel, no_progress
from ..targets import Target, parse_target
from ..training_data import TrainingCase, load_checkpoint_state, resolve_checkpoints, training_set
from ..volumes import resample_to
from ..windows import make_grid
from .base import ExplainInputs, MethodResult, check_finite, execution_order, model_case, module_type

NAME = "tracin"
EPS = 1e-5
AUTO_EXACT_UP_TO = 16384
AUTO_DIMENSION = 2048
MAX_PROJECTION_ENTRIES = 1 << 27   # 512 MiB of float32


# ----- losses ------------------------------------------------------------------------------------------------------
def soft_dice_losses(prob: torch.Tensor, ref: torch.Tensor, valid: torch.Tensor, pid: torch.Tensor | None, n_patches: int) -> torch.Tensor:
    """(1 + n_patches,) soft-Dice losses of the target: over all valid voxels, then per patch (`pid`: patch per voxel)."""
    pr, pp, rr = prob * ref * valid, prob * valid, ref * valid
    total = 1 - (2 * pr.sum() + EPS) / (pp.sum() + rr.sum() + EPS)
    if not n_patches:
        return total[None]
    zeros = prob.new_zeros(n_patches)
    inter, psum, rsum = (zeros.index_add(0, pid, v) for v in (pr, pp, rr))
    return torch.cat([total[None], 1 - (2 * inter + EPS) / (psum + rsum + EPS)])


# ----- windows -------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class WindowPlan:
    """The sliding windows of inference that overlap `mask`, and how their outputs fuse at the mask's voxels."""

    crops: torch.Tensor                 # (W, C, *window)
    local: list[torch.Tensor]           # per window: flat indices inside the window
    ridx: list[torch.Tensor]            # per window: the mask voxels they are (0..n-1)
    share: list[torch.Tensor]           # per window: importance weight / Σ weights at those voxels
    n: int

    def fuse(self, z: torch.Tensor) -> torch.Tensor:
        """Window outputs (W, K, *window) → fused logits (K, n) at the mask voxels."""
        z = z.flatten(2)
        if len(self.local) == 1 and self.local[0].numel() == z.shape[2] == self.n:
            return z[0]
        out = z.new_zeros(z.shape[1], self.n)
        for w in range(len(self.local)):
            out = out.index_add(1, self.ridx[w], z[w][:, self.local[w]] * self.share[w])
        return out


def window_plan(window, image: np.ndarray, mask: np.ndarray) -> WindowPlan:
    """`window`: the model's WindowSpec; `image` (C, ...) in model space; `mask` bool on its grid (C order of voxels)."""
    grid = make_grid(window, image.shape[1:])
    padded = np.pad(image, ((0, 0),) + grid.pad)
    index = np.full(grid.padded_shape, -1, dtype=np.int64)
    index[np.pad(mask.astype(bool), grid.pad)] = np.arange(int(mask.sum()))
    crops, local, ridx, weight = [], [], [], []
    for w in range(len(grid.starts)):
        sub = index[grid.slices(w)].ravel()
        keep = np.flatnonzero(sub >= 0)
        if keep.size:
            crops.append(padded[(slice(None),) + grid.slices(w)])
            local.append(torch.from_numpy(keep))
            ridx.append(torch.from_numpy(sub[keep]))
            weight.append(torch.from_numpy(grid.importance.ravel()[keep].astype(np.float64)))
    n = int(mask.sum())
    norm = torch.zeros(n, dtype=torch.float64)
    for r, wgt in zip(ridx, weight):
        norm[r] += wgt
    share = [(wgt / norm[r]).float() for wgt, r in zip(weight, ridx)]
    return WindowPlan(torch.from_numpy(np.stack(crops).astype(np.float32)), local, ridx, share, n)


def window_size(model, shape) -> tuple[int, ...]:
    size = model.window.size if model.window.kind != "single" and model.window.size else shape
    return tuple(int(w) if w and w > 0 else int(s) for w, s in zip(size, shape))


def target_crop(image: np.ndarray, focus: np.ndarray, size: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A `size` crop centred on the bounding box of `focus` (else the volume centre), zero-padded where the volume
    is smaller; returns the crop (C, *size), its valid-voxel mask and its start (may be negative) on the case grid."""
    shape = np.array(image.shape[1:])
    size_a = np.array(size)
    if focus.any():
        where = np.argwhere(focus)
        centre = (where.min(0) + where.max(0)) // 2
    else:
        centre = shape // 2
    start = np.where(shape >= size_a, np.clip(centre - size_a // 2, 0, np.maximum(shape - size_a, 0)), -((size_a - shape) // 2))
    before = np.maximum(-start, 0)
    after = np.maximum(start + size_a - shape, 0)
    pad = [(0, 0)] + [(int(b), int(a)) for b, a in zip(before, after)]
    box = tuple(slice(int(s + b), int(s + b + w)) for s, b, w in zip(start, before, size_a))
    crop = np.pad(image, pad)[(slice(None),) + box]
    valid = np.pad(np.ones(tuple(shape), bool), pad[1:])[box]
    return np.ascontiguousarray(crop, dtype=np.float32), valid, start


def patch_ids(shape: tuple[int, ...], grid: int) -> np.ndarray:
    """Patch index of each voxel of a `shape` region cut into grid×grid×grid patches (C order)."""
    axes = [np.minimum(np.arange(s) * grid // s, grid - 1) for s in shape]
    i, j, k = np.meshgrid(*axes, indexing="ij")
    return ((i * grid + j) * grid + k).astype(np.int64)


def patch_boxes(shape: tuple[int, ...], grid: int, start) -> list[list[list[int]]]:
    """Voxel bounds [[i0, i1), [j0, j1), [k0, k1)] of each patch on the case grid (C order of patches)."""
    edges = [[int(np.ceil(s * g / grid)) for g in range(grid + 1)] for s in shape]
    boxes = []
    for a in range(grid):
        for b in range(grid):
            for c in range(grid):
                boxes.append([[int(start[d] + edges[d][n]), int(start[d] + edges[d][n + 1])] for d, n in enumerate((a, b, c))])
    return boxes


# ----- parameters and gradients ------------------------------------------------------------------------------------
def select_parameters(module: torch.nn.Module, layers: list[str] | None, probe=None) -> tuple[list[str], list[str]]:
    """(module names, parameter names): the named modules' parameters, or by default the last convolution to run
    (found with forward hooks during `probe()`; registration order for TorchScript)."""
    named = dict(module.named_modules())
    if layers:
        unknown = [n for n in layers if n not in named]
        if unknown:
            convs = [n for n, m in named.items() if module_type(m) in ("Conv3d", "ConvTranspose3d")]
            raise InputError(f"The model has no module named {', '.join(map(repr, unknown))}.",
                             f"Choose --tracin-layers among its modules, e.g. {', '.join(convs[-4:])} (see describe-model).")
        mods = list(layers)
    else:
        convs = [n for n, m in named.items() if module_type(m) in ("Conv3d", "ConvTranspose3d", "Conv2d", "Linear")
                 and any(True for _ in m.parameters(recurse=False))]
        if not convs:
            raise InputError("The model has no convolution whose parameters TracIn could use by default.", "Name modules with --tracin-layers.")
        hookable = probe is not None and not isinstance(module, torch.jit.ScriptModule)
        order = execution_order(named, convs, probe) if hookable else []
        mods = [order[-1] if order else convs[-1]]
    params = [f"{m}.{p}" if m else p for m in mods for p, _ in named[m].named_parameters()]
    if not params:
        raise InputError(f"The module(s) {', '.join(mods)} hold no parameters.", "Name modules with weights (convolutions) in --tracin-layers.")
    return mods, params


class Gradients:
    """Gradients of the soft-Dice losses with respect to the chosen parameters, flattened (names in order)."""

    def __init__(self, module: torch.nn.Module, names: list[str], target: Target, batch_size: int):
        self.module, self.names, self.target, self.batch_size = module, names, target, max(1, batch_size)
        params = dict(module.named_parameters())
        self.params = [params[n] for n in names]
        self.size = sum(p.numel() for p in self.params)
        self.functional = not isinstance(module, torch.jit.ScriptModule)

    def _losses(self, logits, ref, valid, pid, n_patches):
        return soft_dice_losses(self.target.prob(logits), ref, valid, pid, n_patches)

    def vectorised(self, xs: torch.Tensor, refs: torch.Tensor, valids: torch.Tensor, pid: torch.Tensor | None,
                   n_patches: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample gradients of B single-window cases at once, via torch.func: (B, C, *w) → gradients
        (B, 1 + n_patches, D) and the losses (B, 1 + n_patches)."""
        from torch.func import functional_call, jacrev, vmap

        module = self.module

        def losses(sel, x, r, v):
            z = functional_call(module, sel, (x[None],))
            z = z[0] if isinstance(z, (list, tuple)) else z
            out = self._losses(z[0].float().flatten(1), r, v, pid, n_patches)
            return out, out.detach()

        sel = {n: p.detach() for n, p in zip(self.names, self.params)}
        # chunk_size=1: one vector-Jacobian product per loss instead of a nested vmap, which torch's batching rule
        # for instance norm gets wrong (a shape error for any parameter upstream of a norm)
        jac, values = vmap(jacrev(losses, has_aux=True, chunk_size=1), in_dims=(None, 0, 0, 0))(sel, xs, refs, valids)
        return torch.cat([jac[n].flatten(2) for n in self.names], dim=2), values

    def looped(self, forward, crops: torch.Tensor, fuse, ref: torch.Tensor, valid: torch.Tensor, pid: torch.Tensor | None,
               n_patches: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One case with plain autograd: its windows (W, C, *w) through `forward`, fused by `fuse` → gradients
        (1 + n_patches, D) and the losses."""
        for p in self.params:
            p.requires_grad_(True)
        try:
            parts = []
            for a in range(0, crops.shape[0], self.batch_size):
                z = forward(crops[a:a + self.batch_size])
                parts.append((z[0] if isinstance(z, (list, tuple)) else z).float())
            z = torch.cat(parts)
            if not z.requires_grad:
                raise ModelError("This model's forward pass does not let gradients through to the chosen parameters.",
                                 "TracIn needs gradients: give the model as a MONAI bundle, nnU-Net folder or --factory with its state dict.")
            losses = self._losses(fuse(z), ref, valid, pid, n_patches)
            rows = [torch.cat([g.flatten() for g in torch.autograd.grad(loss, self.params, retain_graph=i + 1 < len(losses))])
                    for i, loss in enumerate(losses)]
        finally:
            for p in self.params:
                p.requires_grad_(False)
        return torch.stack(rows), losses.detach()


def projection_matrix(n_params: int, dimension: int | None, seed: int) -> torch.Tensor | None:
    """The seeded Gaussian JL matrix (d, D), N(0, 1/d) entries; None = exact inner products."""
    if dimension is None:
        dimension = 0 if n_params <= AUTO_EXACT_UP_TO else AUTO_DIMENSION
    if dimension == 0:
        return None
    if dimension * n_params > MAX_PROJECTION_ENTRIES:
        raise InputError(f"A {dimension} × {n_params} projection matrix is too large.",
                         f"Use a smaller --projection-dim (at most {MAX_PROJECTION_ENTRIES // n_params}) or fewer --tracin-layers.")
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randn(dimension, n_params, generator=generator) / math.sqrt(dimension)


# ----- the method --------------------------------------------------------------------------------------------------
def _check_options(inputs: ExplainInputs):
    request, options = inputs.request, inputs.request.tracin
    if len(request.targets) != 1:
        raise InputError("TracIn explains one target per run.", "Give one --target-label (run again for another).")
    if len(inputs.models) != 1:
        raise InputError(f"TracIn explains one model (its checkpoints and training cases), but {len(inputs.models)} were given.",
                         "Give one --model (one fold; with an nnU-Net folder pick it with --folds).")
    if options.train_region not in ("crop", "full"):
        raise InputError(f"Unknown training region {options.train_region!r}.", "Choose --train-region crop or full.")
    if options.score not in ("raw", "cosine"):
        raise InputError(f"Unknown influence score {options.score!r}.", "Choose --influence-score raw or cosine.")
    for name, value, low in (("--train-patches", options.patches, 0), ("--projection-dim", options.projection_dim, 0),
                             ("--max-train-cases", options.max_cases, 1), ("--influence-top-k", options.top_k, 1)):
        if value is not None and value < low:
            raise InputError(f"{name} must be at least {low}, got {value}.", f"Pass {name} {max(low, 1)} or more.")


def _prepare_training(model, tc: TrainingCase, target: Target):
    """The training case in model space: image (C, ...), target mask and any-tumour mask on the model grid."""
    if model.in_channels is not None and tc.case.n_channels != model.in_channels:
        raise InputError(f"The training case {tc.id} has {tc.case.n_channels} channels; the model takes {model.in_channels}.",
                         "Give each training case one image per model input channel.")
    try:
        prepared = model.prepare(tc.case)
    except Exception as exc:
        raise ModelError(f"The preprocessing of {model.name} failed on training case {tc.id}: {exc}", "Check the training images.") from exc
    labels = tc.labels
    if tc.case.geometry.differences(prepared.geometry):
        labels = resample_to(labels.astype(np.int32), tc.case.geometry, prepared.geometry, order=0)
    return prepared.image, target.in_reference(labels), labels > 0


def _thumbnail(tc: TrainingCase, target: Target) -> tuple[np.ndarray, np.ndarray]:
    """The axial slice (fixed k) with most target voxels: (image slice, target mask slice) on the case grid."""
    mask = target.in_reference(tc.labels)
    focus = mask if mask.any() else tc.labels > 0
    k = int(focus.sum((0, 1)).argmax()) if focus.any() else tc.labels.shape[2] // 2
    names = [n.lower() for n in tc.case.channel_names]
    c = names.index("flair") if "flair" in names else 0
    return tc.case.images[c][:, :, k].astype(np.float32), mask[:, :, k]


def explain(inputs: ExplainInputs, progress: ProgressFn = no_progress, cancel: CancelToken | None = None) -> list[MethodResult]:
    from .gradients import differentiable_forward

    _check_options(inputs)
    request, options = inputs.request, inputs.request.tracin
    model = inputs.models[0]
    module = model.module
    checkpoints = resolve_checkpoints(model.source, options.checkpoints)
    cases = training_set(model.source, options.training_dir, model.channel_names or inputs.case.channel_names).subset(options.max_cases)
    states = [load_checkpoint_state(c, module) for c in checkpoints]
    mc = model_case(model, inputs)
    plan = window_plan(model.window, mc.prepared.image, mc.roi)
    forward = differentiable_forward(model)
    batch = request.batch_size or (4 if inputs.device.type == "cpu" else 16)
    final = {k: v.detach().clone() for k, v in module.state_dict().items()}
    grad_flags = {n: p.requires_grad for n, p in module.named_parameters()}
    was_training = module.training
    module.to(inputs.device).eval()
    dev = inputs.device
    plan = dataclasses.replace(plan, crops=plan.crops.to(dev), local=[t.to(dev) for t in plan.local],
                               ridx=[t.to(dev) for t in plan.ridx], share=[t.to(dev) for t in plan.share])
    try:
        for p in module.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            z = torch.cat([forward(plan.crops[a:a + batch]) for a in range(0, plan.crops.shape[0], batch)])
            full = plan.fuse(z.float())
        check_finite(full, model.name)
        target = parse_target(request.targets[0], model.labels, model.activation, full.shape[0], model.regions)
        if mc.reference is not None:
            ref = torch.from_numpy(target.in_reference(mc.reference[mc.roi])).to(dev)
        else:
            ref = target.hard(full)
        ref = ref.float()
        ones = torch.ones_like(ref)
        final_loss = float(soft_dice_losses(target.prob(full), ref, ones, None, 0)[0])
        mods, names = select_parameters(module, options.layers, probe=lambda: forward(plan.crops[:1]))
        grads = Gradients(module, names, target, batch)
        proj = projection_matrix(grads.size, options.projection_dim, request.seed)
        proj = proj.to(dev) if proj is not None else None
        project = (lambda g: g) if proj is None else (lambda g: g @ proj.T)
        lrs = torch.tensor([c.learning_rate for c in checkpoints], dtype=torch.float64)

        # the test gradient at every checkpoint (the model's own forward: test-time mirroring included where it has one)
        test_grads, test_losses = [], []
        for k, state in enumerate(states):
            check_cancel(cancel)
            module.load_state_dict(state)
            g, loss = grads.looped(forward, plan.crops, plan.fuse, ref, ones, None, 0)
            test_grads.append(project(g[0]).double())
            test_losses.append(float(loss[0]))
            progress(k + 1, len(states), "TracIn: test gradients")
        test_grads = torch.stack(test_grads)                  # (K, d)

        n_patches = options.patches ** 3 if options.patches else 0
        rows = _score_cases(model, module, cases, states, lrs, test_grads, grads, project, target, options, n_patches, batch, dev,
                            progress, cancel)
    finally:
        module.load_state_dict(final)
        for n, p in module.named_parameters():
            p.requires_grad_(grad_flags[n])
        module.train(was_training)
    reference = mc.to_case_grid(ref.cpu().numpy().astype(np.float32), inputs.case.geometry) > 0.5
    return [_result(inputs, model, target, cases, checkpoints, rows, mods, names, grads.size, proj, final_loss, test_losses,
                    n_patches, mc, reference)]


def _score_cases(model, module, cases, states, lrs, test_grads, grads: Gradients, project, target, options, n_patches, batch, dev,
                 progress, cancel) -> list[dict]:
    """Scores, per-checkpoint contributions, self-influence (and patch scores) of every training case."""
    rows: list[dict] = []
    vectorised = grads.functional and options.train_region == "crop"
    pending: list[dict] = []

    def flush():
        if not pending:
            return
        shapes = {tuple(p["x"].shape) for p in pending}
        groups = [pending] if len(shapes) == 1 and vectorised else [[p] for p in pending]
        raw = np.zeros((len(pending), 1 + n_patches, len(states)))      # lr_k ⟨g_test, g_z⟩: the case, then its patches
        cosine = np.zeros_like(raw)                                      # lr_k cos(g_test, g_z)
        selfinf = np.zeros(len(pending))
        train_loss = np.zeros((len(pending), len(states)))
        for k, state in enumerate(states):
            check_cancel(cancel)
            module.load_state_dict(state)
            at = 0
            for group in groups:
                if vectorised:
                    g, loss = grads.vectorised(torch.stack([p["x"] for p in group]), torch.stack([p["ref"] for p in group]),
                                               torch.stack([p["valid"] for p in group]), group[0]["pid"], n_patches)
                else:
                    p = group[0]
                    g, loss = grads.looped(module, p["x"][None] if p["plan"] is None else p["plan"].crops,
                                           (lambda z: z[0].flatten(1)) if p["plan"] is None else p["plan"].fuse,
                                           p["ref"], p["valid"], p["pid"], n_patches)
                    g, loss = g[None], loss[None]
                train_loss[at:at + len(group), k] = loss[:, 0].cpu().numpy()
                pg = project(g).double()
                s = pg @ test_grads[k]                                   # (b, 1 + P)
                norms = pg.norm(dim=2) * test_grads[k].norm()
                raw[at:at + len(group), :, k] = (lrs[k] * s).cpu().numpy()
                cosine[at:at + len(group), :, k] = (lrs[k] * torch.where(norms > 0, s / norms, 0.0)).cpu().numpy()
                selfinf[at:at + len(group)] += float(lrs[k]) * (g[:, 0].double() ** 2).sum(1).cpu().numpy()
                at += len(group)
        chosen = cosine if options.score == "cosine" else raw
        for i, p in enumerate(pending):
            row = {"index": p["index"], "id": cases.ids[p["index"]], "seed": cases.seeds[p["index"]], "score": float(chosen[i, 0].sum()),
                   "per_checkpoint": chosen[i, 0].tolist(), "score_raw": float(raw[i, 0].sum()), "score_cosine": float(cosine[i, 0].sum()),
                   "self_influence": float(selfinf[i]), "thumbnail": p["thumb"],
                   "target_voxels": p["target_voxels"], "train_loss_per_checkpoint": train_loss[i].tolist()}
            if n_patches:
                row["patches"] = [{"patch": j, "box": box, "score": float(chosen[i, 1 + j].sum()), "score_raw": float(raw[i, 1 + j].sum()),
                                   "score_cosine": float(cosine[i, 1 + j].sum())} for j, box in enumerate(p["boxes"])]
            rows.append(row)
        pending.clear()

    for index in range(len(cases)):
        check_cancel(cancel)
        tc = cases.load(index)
        image, focus, tumour = _prepare_training(model, tc, target)
        entry = {"index": index, "thumb": _thumbnail(tc, target), "target_voxels": int(focus.sum()), "plan": None}
        if options.train_region == "crop":
            size = window_size(model, image.shape[1:])
            crop, valid, start = target_crop(image, focus if focus.any() else tumour, size)
            box_mask = target_crop(focus[None].astype(np.float32), focus if focus.any() else tumour, size)[0][0] > 0.5
            entry.update(x=torch.from_numpy(crop).to(dev), ref=torch.from_numpy(box_mask.ravel()).float().to(dev),
                         valid=torch.from_numpy(valid.ravel()).float().to(dev), region_shape=size, start=start)
        else:
            cplan = window_plan(model.window, image, np.ones(image.shape[1:], bool))
            cplan = dataclasses.replace(cplan, crops=cplan.crops.to(dev), local=[t.to(dev) for t in cplan.local],
                                        ridx=[t.to(dev) for t in cplan.ridx], share=[t.to(dev) for t in cplan.share])
            entry.update(x=cplan.crops, plan=cplan, ref=torch.from_numpy(focus.ravel()).float().to(dev),
                         valid=torch.ones(cplan.n, device=dev), region_shape=image.shape[1:], start=(0, 0, 0))
        if n_patches:
            entry["pid"] = torch.from_numpy(patch_ids(entry["region_shape"], options.patches).ravel()).to(dev)
            entry["boxes"] = patch_boxes(entry["region_shape"], options.patches, entry["start"])
        else:
            entry["pid"] = None
        pending.append(entry)
        if len(pending) >= batch:
            flush()
        progress(index + 1, len(cases), "TracIn: training cases")
    flush()
    return rows


def _result(inputs, model, target, cases, checkpoints, rows, mods, names, n_params, proj, final_loss, test_losses, n_patches, mc,
            reference) -> MethodResult:
    request, options = inputs.request, inputs.request.tracin
    scores = np.array([r["score"] for r in rows])
    order = np.argsort(-scores, kind="stable")
    public = [{k: v for k, v in r.items() if k not in ("thumbnail", "index")} for r in rows]
    k = options.top_k
    proponents = [{"rank": n + 1, **public[i]} for n, i in enumerate([i for i in order if scores[i] > 0][:k])]
    opponents = [{"rank": n + 1, **public[i]} for n, i in enumerate([i for i in order[::-1] if scores[i] < 0][:k])]
    self_order = np.argsort([-r["self_influence"] for r in rows], kind="stable")
    players = [{"id": i, "name": r["id"], "value": r["score"], "per_model": [r["score"]], "seed": r["seed"],
                "self_influence": r["self_influence"]} for i, r in enumerate(public)]
    files, thumbs = {}, None
    if rows:
        png, panels = thumbnail_strip(inputs, reference, target, rows, proponents, opponents)
        files = {"tracin_thumbnails.png": png}
        thumbs = {"file": "tracin_thumbnails.png", "panels": panels}
    result = {
        "method": NAME, "value_function": "soft-dice-loss", "target_label": target.name, "target": target.to_json(),
        "players": players, "ranking": [rows[i]["id"] for i in order], "top_k": [players[i] for i in order[:k]],
        "v_full": None, "v_empty": None,
        "score": options.score,
        "score_definition": ("Σ_k lr_k ⟨∇θ L_test(θ_k), ∇θ L_train(θ_k)⟩" if options.score == "raw" else
                             "Σ_k lr_k cos(∇θ L_test(θ_k), ∇θ L_train(θ_k))") +
                            ", L = 1 − soft Dice of the target; positive = a step on the training case lowers the test loss (proponent); "
                            "every entry also has score_raw and score_cosine",
        "test_loss": {"final_weights": final_loss, "per_checkpoint": test_losses,
                      "definition": "1 − soft Dice of the target over the ROI against the reference"},
        "proponents": proponents, "opponents": opponents,
        "influence": [{"id": r["id"], "seed": r["seed"], "score": r["score"], "score_raw": r["score_raw"], "score_cosine": r["score_cosine"]}
                      for r in public],
        "self_influence": [{"rank": n + 1, "id": public[i]["id"], "seed": public[i]["seed"], "value": public[i]["self_influence"]}
                           for n, i in enumerate(self_order)],
        "checkpoints": [{"file": str(c.path), "label": c.label, "learning_rate": c.learning_rate} for c in checkpoints],
        "parameters": {"modules": mods, "tensors": names, "count": int(n_params)},
        "projection": {"dimension": None if proj is None else int(proj.shape[0]), "seed": request.seed if proj is not None else None,
                       "exact": proj is None, "kind": None if proj is None else "gaussian N(0, 1/d)",
                       "self_influence": "exact (unprojected) gradient norms"},
        "training": {**cases.description, "scored_cases": len(rows), "region": options.train_region,
                     "crop": list(window_size(model, mc.prepared.image.shape[1:])) if options.train_region == "crop" else None,
                     "patch_grid": options.patches or None},
        "thumbnails": thumbs,
        "roi_voxels": int(inputs.roi.sum()),
        "reference_source": "file" if inputs.reference is not None else "model prediction",
    }
    return MethodResult(target.name, result, {}, [{"model": model.name, "checkpoints": len(checkpoints), "training_cases": len(rows)}],
                        files=files)


def thumbnail_strip(inputs, reference: np.ndarray, target, rows, proponents, opponents) -> tuple[bytes, list[dict]]:
    """One PNG row: the test case (ROI outline in cyan, the reference in yellow), then the top proponents (green) and
    opponents (red), each on the axial slice through its target with its ground truth outlined."""
    from ..plots import _pyplot

    plt = _pyplot()
    roi = inputs.roi
    k = int(np.round(np.argwhere(roi)[:, 2].mean()))
    names = [n.lower() for n in inputs.case.channel_names]
    c = names.index("flair") if "flair" in names else 0
    by_id = {r["id"]: r for r in rows}
    panels = [("test case: ROI, reference", inputs.case.images[c][:, :, k], roi[:, :, k], "cyan", {"role": "test"})]
    for role, entries, colour in (("proponent", proponents, "lime"), ("opponent", opponents, "red")):
        for e in entries:
            image, mask = by_id[e["id"]]["thumbnail"]
            panels.append((f"{role} {e['rank']}: {e['id']}\n{e['score']:+.2e}", image, mask, colour,
                           {"role": role, "rank": e["rank"], "id": e["id"]}))
    fig, axes = plt.subplots(1, len(panels), figsize=(1.9 * len(panels), 2.3), dpi=100, squeeze=False)
    for ax, (title, image, mask, colour, _) in zip(axes[0], panels):
        ax.imshow(image.T, cmap="gray", origin="lower")
        if mask.any():
            ax.contour(mask.T.astype(float), levels=[0.5], colors=colour, linewidths=0.8)
        if colour == "cyan" and reference[:, :, k].any():
            ax.contour(reference[:, :, k].T.astype(float), levels=[0.5], colors="yellow", linewidths=0.8)
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    fig.suptitle(f"TracIn, {target.name}: training cases that lowered (proponents) or raised (opponents) the test loss", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue(), [p[4] for p in panels]


# ----- demo ----------------------------------------------------------------------------------------------------------
def tracin_summary(result: dict, k: int = 3) -> str:
    def fmt(entries):
        return ", ".join(f"{e['id']} {e['score']:+.2e}" for e in entries[:k]) or "none"

    proj = result["projection"]
    how = "exact" if proj["exact"] else f"projected to {proj['dimension']}"
    selfinf = ", ".join(f"{e['id']}" for e in result["self_influence"][:k])
    return (f"TracIn, brain {result['target_label']} (fold 0): {result['training']['scored_cases']} training cases × "
            f"{len(result['checkpoints'])} checkpoints, {result['parameters']['count']} parameters ({how}), "
            f"test loss {result['test_loss']['final_weights']:.3f}\n"
            f"    proponents: {fmt(result['proponents'])}\n    opponents: {fmt(result['opponents'])}\n"
            f"    highest self-influence: {selfinf}")


def tracin_demo(out: str | Path, images: list[str], roi_mask: str, model: str | Path, progress: ProgressFn = no_progress,
                cancel: CancelToken | None = None, target: str = "WT", max_cases: int = 16, top_k: int = 3,
                threads: int | None = None) -> tuple[Path, str]:
    """A short TracIn run on the brain demo case through `run()`: the demo bundle's fold-0 checkpoints, the first
    `max_cases` of its regenerated training cases, one tumour-centred crop each. Returns (result folder, summary).
    `threads`: torch threads for this run only (1 is much faster on a busy 2-core machine: oneDNN's Conv3d weight
    gradient stalls when its threads compete for cores)."""
    from ..models import ModelOptions
    from ..request import ExplainRequest, TracInOptions
    from ..result import read_result
    from ..run import run

    request = ExplainRequest(images=list(images), models=[str(model)], out=str(out), targets=[target], method=NAME, value="soft-dice",
                             roi_mask=str(roi_mask), model_options=ModelOptions(trust=True),
                             tracin=TracInOptions(max_cases=max_cases, top_k=top_k))
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        folder = run(request, progress, cancel)
    finally:
        torch.set_num_threads(before)
    return folder, tracin_summary(read_result(folder))
