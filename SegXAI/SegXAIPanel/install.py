"""What to install into Slicer's Python, decided before anything is installed, so that torch is never replaced.

torch comes only from the PyTorch extension (PyTorchUtils, the right CUDA build for the machine). A plain pip run
for monai or nnunetv2 would "upgrade" it to a generic wheel whenever their torch floor is not met, so torch is
skipped (Slicer ≥ 5.12 `pip_ensure(skip_packages=...)`) or pinned to the installed version by a constraints file
(older Slicer), and a torch that is too old is offered as an upgrade through PyTorchUtils instead.

`check_python` must run on any Slicer, Python 3.9 included: this module imports only the standard library and
SegXAILib.errors at load, and `packaging` where a plan is made.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata as metadata
import sys
from pathlib import Path

from typing import TYPE_CHECKING

from SegXAILib.errors import InputError

if TYPE_CHECKING:
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

MIN_PYTHON = (3, 10)
SLICER_FOR_PYTHON = "Slicer 5.12 or later (it ships Python 3.12)"
# torch that the engine's own code needs; monai's floor (read from its metadata once installed) may raise it
ENGINE_TORCH = ">=2.3"
# monai 1.6 declares torch>=2.8: used before monai is installed, so the first Apply already asks for a torch it accepts
MONAI_TORCH_FLOOR = ">=2.8"
SKIPPED = ("torch",)
NNUNET_REQUIREMENT = "nnunetv2>=2.5"


def check_python(version_info=sys.version_info) -> None:
    """Slicer 5.8 ships Python 3.9: shapiq, monai 1.6 and nibabel 5.4 do not install there. Say so, with the fix."""
    if tuple(version_info[:2]) < MIN_PYTHON:
        have = ".".join(str(v) for v in version_info[:3])
        raise InputError(f"This Slicer runs Python {have}; SegXAI's engine needs Python "
                         f"{'.'.join(map(str, MIN_PYTHON))} or newer (shapiq, monai 1.6 and nibabel 5.4 do not install on it).",
                         f"Install {SLICER_FOR_PYTHON} from download.slicer.org and install SegXAI there.")


def load_requirements(path: str | Path) -> list[Requirement]:
    from packaging.requirements import Requirement

    lines = (line.split("#")[0].strip() for line in Path(path).read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def installed_version(name: str) -> Version | None:
    from packaging.version import Version

    try:
        return Version(metadata.version(name))
    except metadata.PackageNotFoundError:
        return None


def torch_requirement() -> SpecifierSet:
    """What torch must satisfy: the engine's floor and monai's (from monai's metadata when installed)."""
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    spec = SpecifierSet(ENGINE_TORCH)
    monai_torch = None
    if installed_version("monai") is not None:
        for text in metadata.requires("monai") or []:
            requirement = Requirement(text)
            if requirement.name == "torch" and requirement.marker is None:
                monai_torch = requirement.specifier
    return spec & (monai_torch if monai_torch is not None else SpecifierSet(MONAI_TORCH_FLOOR))


@dataclasses.dataclass
class InstallPlan:
    """The decision, before any install: pip's requirements (never torch), and what to do about torch."""

    pip: list[Requirement]
    torch_version: Version | None
    torch_needed: SpecifierSet

    @property
    def torch_ok(self) -> bool:
        return self.torch_version is not None and self.torch_needed.contains(self.torch_version, prereleases=True)

    def torch_pin(self) -> str | None:
        """A pip constraints line that keeps the installed torch where `skip_packages` is not available."""
        return f"torch=={self.torch_version}" if self.torch_version is not None else None

    def missing(self) -> list[Requirement]:
        return [r for r in self.pip if not _satisfied(r)]


def plan(requirements: list[Requirement], extra: list[str] = ()) -> InstallPlan:
    """`extra`: more requirements for this run (nnunetv2 when an nnU-Net results folder is used)."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    wanted = [r for r in [*requirements, *map(Requirement, extra)] if r.name.lower() not in SKIPPED]
    torch = installed_version("torch")
    return InstallPlan(wanted, torch.release and Version(".".join(map(str, torch.release))) if torch else None,
                       torch_requirement())


def _satisfied(requirement: Requirement) -> bool:
    version = installed_version(requirement.name)
    return version is not None and requirement.specifier.contains(version, prereleases=True)


def uses_nnunet(model_paths: list[str]) -> bool:
    """An nnU-Net results folder among the models (plans.json + dataset.json, as the engine recognises one)."""
    return any(Path(p).is_dir() and (Path(p) / "plans.json").exists() and (Path(p) / "dataset.json").exists() for p in model_paths)


# ---------------------------------------------------------------------------------------------------------------
# inside Slicer (slicer, PyTorchUtils and the NNUNet extension are imported only here)
def ensure(requirements: Path, model_paths: list[str], ask: bool = True) -> None:
    """Installs what is missing: torch through PyTorchUtils, nnunetv2 through the NNUNet extension where present,
    the rest through pip with torch skipped (or pinned by a constraints file on Slicer without `skip_packages`)."""
    import slicer

    check_python()
    extra = [NNUNET_REQUIREMENT] if uses_nnunet(model_paths) else []
    decided = plan(load_requirements(requirements), extra)
    if not decided.torch_ok:
        _install_torch(decided, ask)
        decided = plan(load_requirements(requirements), extra)
    if any(r.name == "nnunetv2" for r in decided.missing()) and _install_nnunet_through_extension():
        decided = plan(load_requirements(requirements), extra)
    missing = decided.missing()
    if not missing:
        return
    if ask and not slicer.util.confirmOkCancelDisplay(
            f"SegXAI needs these Python packages: {', '.join(map(str, missing))}. Install them now? (torch is kept as it is.)"):
        raise RuntimeError("SegXAI cannot run without its Python packages.")
    pip_ensure = getattr(getattr(slicer, "pydeps", None), "pip_ensure", None) or \
        getattr(getattr(slicer, "packaging", None), "pip_ensure", None)
    if pip_ensure is not None and "skip_packages" in _parameters(pip_ensure):
        pip_ensure(missing, skip_packages=list(SKIPPED), prompt_install=False, requester="SegXAI")
        return
    constraints = Path(slicer.app.temporaryPath) / "SegXAI-constraints.txt"
    constraints.write_text((decided.torch_pin() or "") + "\n")
    slicer.util.pip_install(["-c", str(constraints), *map(str, missing)])


def _install_torch(decided: InstallPlan, ask: bool) -> None:
    import slicer

    try:
        import PyTorchUtils
    except ImportError:
        raise RuntimeError("SegXAI needs the PyTorch extension: install 'PyTorch' from the Extensions Manager and restart Slicer.") from None
    if decided.torch_version is not None and ask and not slicer.util.confirmOkCancelDisplay(
            f"PyTorch {decided.torch_version} is installed; SegXAI and MONAI need torch{decided.torch_needed}. "
            "Upgrade it through PyTorch Utils?"):
        raise RuntimeError(f"SegXAI needs torch{decided.torch_needed}: upgrade it in the PyTorch Utils module.")
    if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=ask and decided.torch_version is None,
                                                      torchVersionRequirement=str(decided.torch_needed)) is None:
        raise RuntimeError("PyTorch is required. Install it from the PyTorch Utils module and try again.")


def _install_nnunet_through_extension() -> bool:
    """The NNUNet extension's installer (it keeps torch and SimpleITK); False where that extension is absent."""
    try:
        from SlicerNNUNetLib import InstallLogic
    except ImportError:
        return False
    return bool(InstallLogic().setupPythonRequirements())


def _parameters(function) -> set:
    import inspect

    try:
        return set(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return set()
