"""Model loading: one entry point that recognises the format from the path."""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelError
from .base import LoadedModel
from .monai_bundle import bundle_metadata, is_bundle, load_bundle
from .nnunet import is_nnunet_folder, load_nnunet, nnunet_folds, nnunet_metadata
from .options import ModelOptions
from .torch_files import archive_kind, load_torch_file


def load_models(paths: list[str | Path], options: ModelOptions | None = None) -> list[LoadedModel]:
    """Every path is one model (fold / ensemble member), except an nnU-Net folder, which gives one per fold."""
    options = options or ModelOptions()
    models: list[LoadedModel] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ModelError(f"The model {path} does not exist.", "Check the --model path.")
        if is_nnunet_folder(path):
            models.extend(load_nnunet(path, options))
        elif is_bundle(path):
            models.append(load_bundle(path, options))
        elif path.is_file():
            models.append(load_torch_file(path, options))
        else:
            raise ModelError(f"{path} is a folder but neither a MONAI bundle (configs/inference.json) nor an nnU-Net results folder (plans.json + dataset.json).",
                             "Point --model at a TorchScript file, a MONAI bundle folder or an nnU-Net results folder.")
    return models


def describe_model(path: str | Path, options: ModelOptions | None = None) -> dict:
    """What a front end needs before running: format, channel names, labels, window, whether --trust is needed.

    Reads only plain metadata for formats whose loading executes code, unless `options.trust` is set.
    """
    options = options or ModelOptions()
    path = Path(path)
    if is_nnunet_folder(path):
        meta = nnunet_metadata(path)
        return {"format": "nnunet-v2", "channels": meta["channels"], "labels": meta["labels"],
                "regions": {k: list(v) for k, v in meta["regions"].items()}, "window": meta["patch_size"], "folds": nnunet_folds(path, options.checkpoint), "needs_trust": True}
    if is_bundle(path):
        meta = bundle_metadata(path)
        return {"format": "monai-bundle", "channels": meta["channels"], "labels": meta["labels"],
                "regions": {k: list(v) for k, v in meta["regions"].items()}, "window": None, "needs_trust": True}
    if path.is_file() and archive_kind(path) == "torchscript":
        model = load_torch_file(path, options)
        return {"format": "torchscript", "channels": model.channel_names, "in_channels": model.in_channels,
                "in_channels_source": model.in_channels_source, "labels": model.labels,
                "regions": {k: list(v) for k, v in model.regions.items()}, "window": list(model.window.size) if model.window.size else None, "needs_trust": False}
    return {"format": "unknown" if not path.exists() else archive_kind(path), "channels": None, "labels": {},
            "window": None, "needs_trust": not options.factory}
