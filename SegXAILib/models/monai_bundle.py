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

from ..errors import InputError, ModelError, TrustError, brief
from ..result import sha256
from ..volumes import Case, Geometry
from ..windows import WindowSpec
from .base import LoadedModel, Prepared, probe_in_channels, region_labels
from .options import ModelOptions

CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")


def is_bundle(path: Path) -> bool:
    return path.is_dir() and any((path / "configs" / n).exists() for n in CONFIG_NAMES)


def bundle_metadata(path: Path) -> dict:
    """Channel names, class names, region label sets and channel count from metadata.json (no code runs).

    MONAI's metadata schema has no field for the label values a sigmoid output stands for; SegXAI reads them from
    `network_data_format.outputs.pred.region_labels` ({"0": [1, 2, 3], ...}, keyed like `channel_def`).
    """
    meta_file = path / "configs" / "metadata.json"
    fix = ("Repair configs/metadata.json: network_data_format.inputs.image.{num_channels, channel_def} and "
           "outputs.pred.{channel_def, region_labels} as in MONAI's bundle specification.")
    try:
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelError(f"Cannot read {meta_file} as JSON: {brief(exc)}.", fix) from exc
    try:
        fmt = meta.get("network_data_format", {})
        image = fmt.get("inputs", {}).get("image", {})
        pred = fmt.get("outputs", {}).get("pred", {})
        channels = [str(image["channel_def"][k]) for k in sorted(image.get("channel_def", {}), key=int)] or None
        labels = {str(v): int(k) for k, v in pred.get("channel_def", {}).items()}
        in_channels = image.get("num_channels")
        if in_channels is not None and (isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1):
            raise ValueError(f"num_channels is {in_channels!r}")
    except (AttributeError, TypeError, ValueError, KeyError) as exc:
        raise ModelError(f"The bundle metadata {meta_file} is malformed: {brief(exc)}.", fix) from exc
    regions = region_labels(labels, pred.get("region_labels"), f"The bundle metadata {meta_file}")
    return {"channels": channels, "in_channels": in_channels, "labels": labels, "regions": regions, "raw": meta}


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
        raise ModelError(f"Cannot build network_def of {config}: {brief(exc)}", "Check the bundle's inference config.") from exc
    weights = path / "models" / "model.pt"
    if not weights.exists():
        raise ModelError(f"{path} has no models/model.pt.", "Put the trained state dict at models/model.pt in the bundle.")
    try:
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"Cannot read {weights} as a state dict (weights_only=True): {brief(exc)}",
                         "Save the bundle weights with torch.save(model.state_dict(), 'models/model.pt').") from exc
    state = state.get("model", state.get("state_dict", state)) if isinstance(state, dict) else state
    try:
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except (RuntimeError, AttributeError, TypeError) as exc:
        raise ModelError(f"The weights {weights} do not fit the bundle's network_def ({type(net).__name__}): {brief(exc)}",
                         "Use the models/model.pt trained with this network_def, or correct network_def's arguments in the inference config.") from exc
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
    labels = options.labels or meta["labels"]
    regions = region_labels(labels, options.regions, "--region-labels", InputError) or meta["regions"]
    channels = options.channels or meta["channels"]
    if options.channels:
        in_channels, source = len(options.channels), "user"
    elif meta["in_channels"] or channels:
        in_channels, source = meta["in_channels"] or len(channels), "metadata"
    else:
        in_channels, source = probe_in_channels(net, window.size), "forward pass"
    return LoadedModel(
        name=path.name, format="monai-bundle", source=str(path), sha256=sha256(path), forward=net, module=net,
        in_channels=in_channels, channel_names=channels, labels=labels,
        activation=options.activation or ("sigmoid" if meta["regions"] else _activation(parser)), window=window,
        prepare=_bundle_prepare(transforms), preprocessing=" → ".join(type(t).__name__ for t in transforms) or "none",
        regions=regions, in_channels_source=source)


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
