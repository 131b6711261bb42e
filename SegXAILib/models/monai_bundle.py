"""MONAI bundle folders: network, weights, preprocessing and sliding-window settings from the bundle's own configs.

`configs/metadata.json` is plain JSON and is read without trust (channel and class names). Building the network
and transforms goes through MONAI's ConfigParser, which evaluates `$` expressions and imports `_target_`
classes: that executes code from the bundle, so it needs --trust. Weights load with weights_only=True.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelError, TrustError
from ..result import sha256
from ..volumes import Case, Geometry
from ..windows import WindowSpec
from .base import LoadedModel, Prepared, first_conv_in_channels
from .options import ModelOptions

CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")


def is_bundle(path: Path) -> bool:
    return path.is_dir() and any((path / "configs" / n).exists() for n in CONFIG_NAMES)


def bundle_metadata(path: Path) -> dict:
    """Channel names, class names and channel count from metadata.json (no code runs)."""
    meta_file = path / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    fmt = meta.get("network_data_format", {})
    image = fmt.get("inputs", {}).get("image", {})
    pred = fmt.get("outputs", {}).get("pred", {})
    channels = [image["channel_def"][k] for k in sorted(image.get("channel_def", {}), key=int)] or None
    labels = {v: int(k) for k, v in pred.get("channel_def", {}).items()}
    return {"channels": channels, "in_channels": image.get("num_channels"), "labels": labels, "raw": meta}


def load_bundle(path: Path, options: ModelOptions) -> LoadedModel:
    meta = bundle_metadata(path)
    if not options.trust:
        raise TrustError(f"{path} is a MONAI bundle; building it evaluates expressions and imports classes named in its configs.",
                         "Only if you trust the bundle's author, pass --trust.")
    from monai.bundle import ConfigParser

    config = next(path / "configs" / n for n in CONFIG_NAMES if (path / "configs" / n).exists())
    parser = ConfigParser()
    parser.read_config(str(config))
    parser["bundle_root"] = str(path)
    try:
        net = parser.get_parsed_content("network_def")
    except Exception as exc:
        raise ModelError(f"Cannot build network_def of {config}: {exc}", "Check the bundle's inference config.") from exc
    weights = path / "models" / "model.pt"
    if not weights.exists():
        raise ModelError(f"{path} has no models/model.pt.", "Put the trained state dict at models/model.pt in the bundle.")
    try:
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"Cannot read {weights} as a state dict (weights_only=True): {exc}",
                         "Save the bundle weights with torch.save(model.state_dict(), 'models/model.pt').") from exc
    state = state.get("model", state.get("state_dict", state)) if isinstance(state, dict) else state
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    net.eval()

    window = WindowSpec()
    if "inferer" in parser.config:
        inferer = parser.get_parsed_content("inferer")
        if hasattr(inferer, "roi_size"):
            window = WindowSpec("monai", tuple(int(r) for r in inferer.roi_size), float(np.atleast_1d(inferer.overlap)[0]),
                                str(getattr(inferer, "mode", "constant")), float(np.atleast_1d(getattr(inferer, "sigma_scale", 0.125))[0]))
    if options.window:
        window = WindowSpec("monai", tuple(options.window), options.overlap if options.overlap is not None else window.overlap,
                            window.mode, window.sigma_scale)
    transforms = _preprocessing(parser)
    return LoadedModel(
        name=path.name, format="monai-bundle", source=str(path), sha256=sha256(path), forward=net, module=net,
        in_channels=meta["in_channels"] or first_conv_in_channels(net), channel_names=options.channels or meta["channels"],
        labels=options.labels or meta["labels"], activation=options.activation or _activation(parser), window=window,
        prepare=_bundle_prepare(transforms), preprocessing=" → ".join(type(t).__name__ for t in transforms) or "none")


def _preprocessing(parser) -> list:
    """The bundle's preprocessing transforms, less loading and channel handling (the case is already channel-first)."""
    if "preprocessing" not in parser.config:
        return []
    compose = parser.get_parsed_content("preprocessing")
    transforms = list(getattr(compose, "transforms", [compose]))
    skip = ("Load", "EnsureChannelFirst", "AsChannelFirst", "EnsureType", "ToTensor")
    return [t for t in transforms if not type(t).__name__.startswith(skip)]


def _activation(parser) -> str:
    text = json.dumps(parser.config.get("postprocessing", {}))
    return "sigmoid" if '"sigmoid": true' in text.lower() else "softmax"


def _bundle_prepare(transforms: list):
    def prepare(case: Case) -> Prepared:
        from monai.data import MetaTensor

        data = {"image": MetaTensor(torch.from_numpy(case.images.copy()), affine=torch.as_tensor(case.geometry.affine))}
        for t in transforms:
            data = t(data)
        out = data["image"]
        affine = np.asarray(out.affine, dtype=float) if isinstance(out, MetaTensor) else case.geometry.affine
        image = np.asarray(out.detach().cpu().numpy() if torch.is_tensor(out) else out, dtype=np.float32)
        return Prepared(np.ascontiguousarray(image), Geometry(tuple(image.shape[1:]), affine))

    return prepare
