"""TorchScript files, pickled whole modules (with --trust) and Python factory + state dict.

Metadata travels inside a TorchScript file as the extra file `segxai.json` ({"channels", "labels", "regions",
"activation", "window", "overlap", "preprocess"}); options given by the user override it. A model that declares no
channels has its channel count found by a forward pass, never read off a layer.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import torch

from ..errors import InputError, ModelError, TrustError, brief
from ..result import sha256
from ..windows import WindowSpec
from .base import PREPROCESSORS, LoadedModel, identity_prepare, probe_in_channels, region_labels
from .options import ModelOptions

METADATA_FILE = "segxai.json"


def archive_kind(path: Path) -> str:
    """"torchscript", "pickle" (torch.save of an object or a state dict) or "unknown", without unpickling.

    torch.save writes a zip holding `<name>/data.pkl` (older versions a bare pickle, which starts with the pickle
    protocol byte 0x80); any other file, zipped or not, is not a model whatever its suffix.
    """
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as fh:
            return "pickle" if fh.read(1) == b"\x80" else "unknown"
    try:
        names = zipfile.ZipFile(path).namelist()
    except (zipfile.BadZipFile, OSError):
        return "unknown"
    if any("/code/" in n or n.startswith("code/") for n in names) and any(n.endswith("constants.pkl") for n in names):
        return "torchscript"
    return "pickle" if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names) else "unknown"


def _metadata(path: Path, text: str) -> dict:
    """The segxai.json extra file, checked: a malformed one is reported, never half-used."""
    if not text:
        return {}
    fix = (f"Rewrite the {METADATA_FILE} extra file of {path.name} as a JSON object with \"channels\" (list of names), "
           "\"labels\" (name -> output channel), optionally \"regions\", \"activation\", \"window\", \"overlap\", \"preprocess\"; "
           "or give the same with --channels / --window / --preprocess.")
    try:
        meta = json.loads(text)
    except ValueError as exc:
        raise ModelError(f"The {METADATA_FILE} metadata inside {path} is not valid JSON: {brief(exc)}.", fix) from exc
    checks = {"channels": lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v),
              "labels": lambda v: isinstance(v, dict) and all(isinstance(c, int) and not isinstance(c, bool) for c in v.values()),
              "activation": lambda v: v in ("softmax", "sigmoid"),
              "window": lambda v: isinstance(v, list) and len(v) == 3 and all(isinstance(c, int) and c > 0 for c in v),
              "overlap": lambda v: isinstance(v, (int, float)) and 0 <= v < 1,
              "preprocess": lambda v: isinstance(v, str),
              "regions": lambda v: isinstance(v, dict)}
    if not isinstance(meta, dict):
        raise ModelError(f"The {METADATA_FILE} metadata inside {path} is a JSON {type(meta).__name__}, not an object.", fix)
    bad = [f"{key}={meta[key]!r}" for key, ok in checks.items() if key in meta and not ok(meta[key])]
    if bad:
        raise ModelError(f"The {METADATA_FILE} metadata inside {path} has malformed entries: {'; '.join(bad)[:300]}.", fix)
    return meta


def load_torch_file(path: Path, options: ModelOptions) -> LoadedModel:
    kind = archive_kind(path)
    meta: dict = {}
    if options.factory:
        module = _from_factory(path, options)
        fmt = "factory+state_dict"
    elif kind == "torchscript":
        extra = {METADATA_FILE: ""}
        try:
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        except Exception as exc:
            raise ModelError(f"Cannot load the TorchScript file {path}: {brief(exc)}", "Check that it was written by torch.jit.save.") from exc
        meta = _metadata(path, extra[METADATA_FILE])
        fmt = "torchscript"
    elif kind == "pickle":
        module = _from_pickle(path, options)
        fmt = "pickled-module"
    else:
        raise ModelError(f"{path} is not a model file SegXAI can read (neither TorchScript nor a file written by torch.save).",
                         "Give a TorchScript file, a MONAI bundle folder, an nnU-Net results folder, or a state dict with --factory.")
    module.eval()
    preprocess = options.preprocess if options.preprocess != "none" else meta.get("preprocess", "none")
    if preprocess not in PREPROCESSORS:
        source = f"the {METADATA_FILE} metadata of {path.name}" if preprocess == meta.get("preprocess") else "the request"
        raise InputError(f"Unknown preprocessing {preprocess!r} (from {source}).", f"Use one of: {', '.join(PREPROCESSORS)}.")
    window = options.window or meta.get("window")
    spec = WindowSpec("monai", tuple(window), options.overlap if options.overlap is not None else meta.get("overlap", 0.5)) \
        if window else WindowSpec()
    labels = options.labels or {str(k): int(v) for k, v in meta.get("labels", {}).items()}
    regions = region_labels(labels, options.regions, "--region-labels", InputError) or \
        region_labels(labels, meta.get("regions"), f"The {METADATA_FILE} metadata of {path.name}")
    channels = options.channels or meta.get("channels")
    if channels:
        in_channels, source = len(channels), "user" if options.channels else "metadata"
    else:
        in_channels, source = probe_in_channels(module, spec.size), "forward pass"
    return LoadedModel(
        name=path.name, format=fmt, source=str(path), sha256=sha256(path), forward=module, module=module,
        in_channels=in_channels, channel_names=channels, labels=labels,
        activation=options.activation or meta.get("activation", "softmax"), window=spec,
        prepare=identity_prepare(PREPROCESSORS[preprocess]), preprocessing=preprocess, regions=regions,
        in_channels_source=source)


def _from_pickle(path: Path, options: ModelOptions) -> torch.nn.Module:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception:
        obj = None
    if isinstance(obj, dict):
        raise ModelError(f"{path} holds a state dict (weights only), not a network.",
                         "Name the code that builds the network: --factory package.module:function [--factory-kwargs JSON].")
    if not options.trust:
        raise TrustError(f"{path} is a pickled PyTorch object; loading it executes code stored in the file.",
                         "Only if you trust its author, pass --trust; better, export the model with torch.jit.save or as a state dict.")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ModelError(f"Cannot unpickle {path}: {brief(exc)}", "Check that the file is complete and the code it refers to is importable.") from exc
    if not isinstance(obj, torch.nn.Module):
        raise ModelError(f"{path} holds a {type(obj).__name__}, not a torch.nn.Module.", "Save the network itself, or its state dict with --factory.")
    return obj


def _from_factory(path: Path, options: ModelOptions) -> torch.nn.Module:
    import importlib

    module_name, _, attr = options.factory.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ModelError(f"Cannot import the factory {options.factory!r}: {brief(exc)}",
                         "Give it as package.module:function, importable from the current environment.") from exc
    try:
        net = factory(**(options.factory_kwargs or {}))
    except Exception as exc:
        raise ModelError(f"The factory {options.factory} failed with {options.factory_kwargs}: {brief(exc)}",
                         "Check the factory arguments (--factory-kwargs) against the training configuration.") from exc
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"Cannot read the state dict {path} with weights_only=True: {brief(exc)}",
                         "Save the weights with torch.save(model.state_dict(), path).") from exc
    state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
    try:
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as exc:
        raise ModelError(f"The weights in {path} do not fit the network built by {options.factory}: {str(exc)[:400]}",
                         "Check the factory arguments (--factory-kwargs) against the training configuration.") from exc
    return net
