"""The panel's parameters → the engine's request and a fresh result folder (never an existing one)."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from SegXAILib import mrml_adapter
from SegXAILib.errors import InputError


def output_folder(p, default_base: Path) -> Path:
    """<base>/<method>-<target>-<time>, numbered when taken, so that a run never overwrites an earlier one."""
    base = Path(str(p.outputFolder)) if p.outputFolder and str(p.outputFolder) not in ("", ".") else default_base
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"{p.method.value}-{mrml_adapter._safe(p.target)}-{stamp}"
    out, n = base / name, 2
    while out.exists() or Path(f"{out}-inputs").exists():
        out, n = base / f"{name}-{n}", n + 1
    return out


def explain_request(p, out: Path, inputs: Path, trust: bool = False):
    """Writes the scene's inputs next to the result folder and returns the engine request (imports torch).
    `trust`: the user trusted every model that needs it (SegXAIPanel.trust); never read from the scene."""
    from SegXAILib.models.options import ModelOptions
    from SegXAILib.request import CausalOptions, ExplainRequest, RegionOptions

    label_values = json.loads(p.modelLabels) if p.modelLabels else {}
    names = [n.strip() for n in p.channelNames.split(",")] if p.channelNames else None
    files = mrml_adapter.write_case_files(inputs, p.images(), p.roi, p.reference, names, label_values)
    region = RegionOptions(features=p.regionPlayers, top_k=int(p.topK))
    if p.regionPlayers == "lattice":
        region.cell_mm = float(p.cellMm)
    elif p.regionPlayers in ("supervoxel", "hybrid"):
        region.n_players = int(p.nPlayers)
    if p.regionPlayers in ("organ", "hybrid"):  # organs come from the reference, in the model's label values
        if not files.reference:
            raise InputError("Organ regions need a reference segmentation.", "Select a reference under Inputs.")
        region.labels = files.reference
        region.label_names = {int(v): str(k) for k, v in label_values.items() if int(v) > 0} or None
    causal = CausalOptions(intervention=p.intervention, max_samples=int(p.maxSamples))
    causal.min_samples = min(causal.min_samples, causal.max_samples)
    return ExplainRequest(**files.request_fields(), models=p.modelPaths(), out=str(out), targets=[p.target],
                          method=p.method.value, value=p.value.value, seed=int(p.seed), budget=int(p.budget) or None,
                          device=p.device, baseline=p.baseline,
                          model_options=ModelOptions(trust=bool(trust), channels=names, preprocess=p.preprocess),
                          region=region, causal=causal)
