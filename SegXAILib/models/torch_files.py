"""TorchScript files, pickled whole modules (with --trust) and Python factory + state dict.

Metadata travels inside a TorchScript file as the extra file `segxai.json` ({"channels", "labels", "activation",
"window", "overlap", "preprocess"}); options given by the user override it.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import torch

from ..errors import ModelError, TrustError
from ..result import sha256
from ..windows import WindowSpec
from .base import PREPROCESSORS, LoadedModel, first_conv_in_channels, identity_prepare
from .options import ModelOptions

METADATA_FILE = "segxai.json"


def archive_kind(path: Path) -> str:
    """"torchscript", "pickle" (torch.save of an object or a state dict) or "unknown", without unpickling."""
    if not zipfile.is_zipfile(path):
        return "pickle" if path.suffix in (".pt", ".pth", ".ckpt") else "unknown"
    names = zipfile.ZipFile(path).namelist()
    if any("/code/" in n or n.startswith("code/") for n in names) and any(n.endswith("constants.pkl") for n in names):
        return "torchscript"
    return "pickle"


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
            raise ModelError(f"Cannot load the TorchScript file {path}: {exc}", "Check that it was written by torch.jit.save.") from exc
        meta = json.loads(extra[METADATA_FILE]) if extra[METADATA_FILE] else {}
        fmt = "torchscript"
    elif kind == "pickle":
        module = _from_pickle(path, options)
        fmt = "pickled-module"
    else:
        raise ModelError(f"{path} is not a model file SegXAI can read.",
                         "Give a TorchScript file, a MONAI bundle folder, an nnU-Net results folder, or a state dict with --factory.")
    module.eval()
    preprocess = options.preprocess if options.preprocess != "none" else meta.get("preprocess", "none")
    window = options.window or meta.get("window")
    spec = WindowSpec("monai", tuple(window), options.overlap if options.overlap is not None else meta.get("overlap", 0.5)) \
        if window else WindowSpec()
    return LoadedModel(
        name=path.name, format=fmt, source=str(path), sha256=sha256(path), forward=module, module=module,
        in_channels=len(meta["channels"]) if meta.get("channels") else first_conv_in_channels(module),
        channel_names=options.channels or meta.get("channels"),
        labels=options.labels or {str(k): int(v) for k, v in meta.get("labels", {}).items()},
        activation=options.activation or meta.get("activation", "softmax"), window=spec,
        prepare=identity_prepare(PREPROCESSORS[preprocess]), preprocessing=preprocess)


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
        raise ModelError(f"Cannot unpickle {path}: {exc}", "Check that the file is complete and the code it refers to is importable.") from exc
    if not isinstance(obj, torch.nn.Module):
        raise ModelError(f"{path} holds a {type(obj).__name__}, not a torch.nn.Module.", "Save the network itself, or its state dict with --factory.")
    return obj


def _from_factory(path: Path, options: ModelOptions) -> torch.nn.Module:
    import importlib

    module_name, _, attr = options.factory.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ModelError(f"Cannot import the factory {options.factory!r}: {exc}",
                         "Give it as package.module:function, importable from the current environment.") from exc
    try:
        net = factory(**(options.factory_kwargs or {}))
    except Exception as exc:
        raise ModelError(f"The factory {options.factory} failed with {options.factory_kwargs}: {exc}",
                         "Check the factory arguments (--factory-kwargs) against the training configuration.") from exc
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"Cannot read the state dict {path} with weights_only=True: {exc}",
                         "Save the weights with torch.save(model.state_dict(), path).") from exc
    state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
    try:
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as exc:
        raise ModelError(f"The weights in {path} do not fit the network built by {options.factory}: {str(exc)[:400]}",
                         "Check the factory arguments (--factory-kwargs) against the training configuration.") from exc
    return net
