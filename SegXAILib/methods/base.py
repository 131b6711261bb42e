"""What every method shares: the inputs of a run, its per-target result, and the case as each model sees it.

Masks (ROI, reference, ground truth) are given on the case grid; each model may work on its own grid (nnU-Net
crops and resamples, a bundle may reorient), so masks are mapped into the model grid with nearest neighbour,
and model-grid outputs are mapped back onto the case grid for the result volumes.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import torch

from ..errors import InputError, ModelError
from ..models import LoadedModel, Prepared
from ..request import ExplainRequest
from ..volumes import Case, Geometry, resample_to


@dataclasses.dataclass
class ExplainInputs:
    request: ExplainRequest
    case: Case
    roi: np.ndarray                    # bool, case grid
    reference: np.ndarray | None       # int labels, case grid
    ground_truth: np.ndarray | None    # int labels, case grid
    labels: np.ndarray | None          # organ / region label map (region players), case grid
    models: list[LoadedModel]
    device: torch.device
    on_partial: Callable[["MethodResult", int, int | None], None] | None = None  # (result so far, coalitions, budget)


@dataclasses.dataclass
class MethodResult:
    target: str
    result: dict                                   # result.json fields (run() adds request and provenance)
    maps: dict[str, tuple[np.ndarray, Geometry]]   # volumes on the case grid
    stats: list[dict]                              # evaluator figures per model, for provenance
    files: dict[str, bytes] = dataclasses.field(default_factory=dict)  # other files written beside result.json (PNG)


@dataclasses.dataclass
class ModelCase:
    """The case in one model's input space, with the masks mapped onto that grid."""

    prepared: Prepared
    roi: np.ndarray
    reference: np.ndarray | None
    ground_truth: np.ndarray | None
    labels: np.ndarray | None

    def to_case_volume(self, volume: np.ndarray, case_geometry: Geometry, order: int = 0) -> np.ndarray:
        """A volume on the model grid mapped onto the case grid (unchanged when the grids are the same)."""
        if not self.prepared.geometry.differences(case_geometry):
            return volume
        return resample_to(volume, self.prepared.geometry, case_geometry, order=order)

    def to_case_grid(self, values_at_roi: np.ndarray, case_geometry: Geometry, order: int = 0) -> np.ndarray:
        """Scatters per-ROI-voxel values into the model grid and maps them onto the case grid."""
        volume = np.zeros(self.roi.shape, dtype=np.float32)
        volume[self.roi] = values_at_roi
        return self.to_case_volume(volume, case_geometry, order)


def _to_model_grid(mask: np.ndarray | None, case: Case, prepared: Prepared) -> np.ndarray | None:
    if mask is None or not case.geometry.differences(prepared.geometry):
        return mask
    return resample_to(mask.astype(np.int32), case.geometry, prepared.geometry, order=0)


def model_case(model: LoadedModel, inputs: ExplainInputs) -> ModelCase:
    """Checks the model takes the case, runs its preprocessing, and maps the masks onto its grid."""
    case = inputs.case
    if model.in_channels is not None and model.in_channels != case.n_channels:
        names = f" ({', '.join(model.channel_names)})" if model.channel_names else ""
        raise InputError(f"The model {model.name} takes {model.in_channels} input channels{names}, but {case.n_channels} were given.",
                         "Pass one --image per model input channel, in the model's order.")
    try:
        prepared = model.prepare(case)
    except Exception as exc:
        raise ModelError(f"The preprocessing of {model.name} failed on this case: {exc}", "Check the images suit this model (channels, dimensions).") from exc
    roi = _to_model_grid(inputs.roi, case, prepared).astype(bool)
    if not roi.any():
        raise InputError(f"The ROI lies outside the part of the image that {model.name} sees (after its cropping).",
                         "Draw the ROI over the imaged anatomy.")
    return ModelCase(prepared, roi, *(_to_model_grid(m, case, prepared) for m in (inputs.reference, inputs.ground_truth, inputs.labels)))


def baseline_values(image: np.ndarray, kind: str) -> np.ndarray:
    """What a removed channel is replaced by, per channel in model space: zero (the mean after z-scoring), mean or min."""
    if kind == "zero":
        return np.zeros((image.shape[0], 1, 1, 1), dtype=np.float32)
    if kind == "mean":
        return image.reshape(image.shape[0], -1).mean(1).reshape(-1, 1, 1, 1).astype(np.float32)
    if kind == "min":
        return image.reshape(image.shape[0], -1).min(1).reshape(-1, 1, 1, 1).astype(np.float32)
    raise InputError(f"Unknown baseline {kind!r}.", "Choose --baseline zero, mean or min.")


def module_type(module: torch.nn.Module) -> str:
    """The class name, also for TorchScript modules (which keep it as `original_name`)."""
    return getattr(module, "original_name", type(module).__name__)


def execution_order(named: dict[str, torch.nn.Module], names: list[str], probe) -> list[str]:
    """`names` in the order their modules ran during `probe()` (one forward pass), each once: registration order is
    not execution order (SegResNet registers its up-sampling convolutions after the blocks they feed)."""
    order: list[str] = []
    hooks = [named[n].register_forward_hook(lambda *_, n=n: order.append(n)) for n in names]
    try:
        with torch.no_grad():
            probe()
    finally:
        for hook in hooks:
            hook.remove()
    return list(dict.fromkeys(order))
