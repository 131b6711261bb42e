"""ExplainRequest: everything a front end gathers for one run, in one typed object (the CLI, Slicer and web build it)."""

from __future__ import annotations

import dataclasses

from .models.options import ModelOptions


@dataclasses.dataclass
class RegionOptions:
    """Region SHAP: which players, how many, how they are estimated and summarised."""

    features: str = "supervoxel"            # supervoxel | lattice | organ | hybrid | labels
    labels: str | None = None               # label map for organ / hybrid / labels players
    label_names: dict[int, str] | None = None
    n_players: int = 64                     # supervoxel / hybrid count (lattice: when no cell size is given)
    cell_mm: float | None = None            # lattice cell size
    # when not exact: permutation-cached (window_games.py: the fastest to a converged map, docs/benchmarks.md) or a shapiq
    # approximator (estimators.APPROXIMATORS)
    estimator: str = "permutation-cached"
    tolerance: float | None = None          # stop once every player's standard error is at most this (budget: upper bound)
    mask_share: float = 0.8                 # the global mask holds this share of the positive attribution
    top_k: int = 10


@dataclasses.dataclass
class CausalOptions:
    """Causal ATE: how regions are intervened on, how long to sample, which network components to switch off."""

    intervention: str = "shift"             # shift (real tissue from elsewhere in the case) | baseline
    min_samples: int = 3                    # every region gets these
    max_samples: int = 30                   # regions whose interval stays wide get up to these
    tolerance: float = 0.01                 # stop a region once its interval half-width is below this (value units)
    confidence: float = 0.95
    mask_share: float = 0.8
    components: list[str] | None = None     # module names (model.named_modules()) to intervene on
    component_unit: str = "channel"         # channel | block


@dataclasses.dataclass
class GradientOptions:
    """Gradient baselines: which one, on which output, and what they write."""

    kind: str = "integrated-gradients"      # saliency | integrated-gradients | grad-cam | occlusion (region players)
    output: str = "logit"                   # the target's logit or probability (prob), summed over the ROI
    n_steps: int = 32                       # Integrated Gradients path steps
    layer: str | None = None                # Grad-CAM layer (module name); default the last Conv3d before the head
    per_channel: bool = False               # also write one attribution map per input channel


@dataclasses.dataclass
class TracInOptions:
    """TracIn: the training cases, the checkpoints with their learning rates, which parameters, how to score."""

    training_dir: str | None = None         # cases.json or one subfolder per case; default: the demo bundle's regenerated cases
    checkpoints: list[str] = dataclasses.field(default_factory=list)  # "PATH:LR" each; none: the model folder's checkpoints/checkpoints.json
    layers: list[str] | None = None         # modules whose parameters are differentiated; default: the last convolution
    projection_dim: int | None = None       # random projection dimension; None: exact up to 16384 parameters, 0: always exact
    train_region: str = "crop"              # crop (one window centred on the training case's target) | full (whole case)
    patches: int = 0                        # > 0: also score a patches³ grid of patches within each training case
    max_cases: int | None = None            # score only the first N training cases
    score: str = "raw"                      # raw (TracIn) | cosine (gradient cosine per checkpoint; both are always reported)
    top_k: int = 5                          # proponents and opponents listed


@dataclasses.dataclass
class ExplainRequest:
    images: list[str]                      # one per model input channel, in order (or one 4D file)
    models: list[str]                      # one per fold / ensemble member (an nnU-Net folder gives all its folds)
    out: str
    targets: list[str]                     # label numbers, names, label sets "1,3" or BraTS regions WT / TC / ET
    method: str = "contrast-shapley"
    value: str = "dice"
    roi_mask: str | None = None
    roi_box: list[float] | None = None     # R1 A1 S1 R2 A2 S2 in mm
    reference: str | None = None           # default: each model's own prediction on the unperturbed case
    ground_truth: str | None = None        # only reported (Dice per model), never used as the reference unless given as such
    seed: int = 0
    budget: int | None = None
    device: str = "auto"
    baseline: str = "zero"                 # zero | mean | min, per channel in the model's input space
    resample: bool = False
    overwrite: bool = False
    clinician_ranking: str | None = None   # "FLAIR,T2,T1c,T1" or a JSON table; default: Resources/clinician_rankings.json
    batch_size: int | None = None          # windows per forward pass; default: from free memory
    model_options: ModelOptions = dataclasses.field(default_factory=ModelOptions)
    region: RegionOptions = dataclasses.field(default_factory=RegionOptions)
    causal: CausalOptions = dataclasses.field(default_factory=CausalOptions)
    gradients: GradientOptions = dataclasses.field(default_factory=GradientOptions)
    tracin: TracInOptions = dataclasses.field(default_factory=TracInOptions)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)
