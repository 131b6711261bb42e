"""SegXAI: explain a 3D segmentation model inside a region of interest, from 3D Slicer.

Thin by design: the panel (widget + parameter node) gathers inputs and shows outputs; the logic writes the scene's
inputs to files (SegXAILib.mrml_adapter), starts the engine in a PythonSlicer subprocess (SegXAILib.runner), and
loads the result folder back into the scene. A crash or out-of-memory in the model never takes Slicer down, the
GUI stays responsive (a QTimer polls the runner on the main thread, the only thread that touches MRML), and Cancel
ends the engine's whole process tree.
"""

import datetime
import enum
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Optional, Union

import numpy as np
import qt
import slicer
import vtk
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, Default, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest,
                                           ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin


def _importLib():
    """SegXAILib sits beside this file once built; in a source checkout (--additional-module-paths SegXAI) it is one up."""
    try:
        import SegXAILib  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


_importLib()
# Only the light parts of SegXAILib are imported with the module: numpy, vtk and MRML, never torch or the engine.
from SegXAILib import mrml_adapter  # noqa: E402
from SegXAILib.runner import EngineRunner, RunState, describe_model_argv, engine_environment, explain_argv  # noqa: E402

MAX_CHANNELS = 6
TORCH_REQUIREMENT = ">=2.3"


class Method(enum.Enum):
    CONTRAST_SHAPLEY = "contrast-shapley"
    REGION_SHAP = "region-shap"
    CAUSAL = "causal"

    def label(self):
        return {Method.CONTRAST_SHAPLEY: _("Contrast Shapley (which MRI contrast)"),
                Method.REGION_SHAP: _("Region SHAP (which regions)"),
                Method.CAUSAL: _("Causal effect (switching regions off)")}[self]


class ValueFunction(enum.Enum):
    DICE = "dice"
    SOFT_DICE = "soft-dice"
    TP = "tp"
    FP = "fp"
    TP_RATE = "tp-rate"
    FP_RATE = "fp-rate"
    MEAN_PROB = "mean-prob"

    def label(self):
        return {ValueFunction.DICE: _("Dice with the reference"), ValueFunction.SOFT_DICE: _("Soft Dice"),
                ValueFunction.TP: _("True positives"), ValueFunction.FP: _("False positives"),
                ValueFunction.TP_RATE: _("True-positive rate"), ValueFunction.FP_RATE: _("False-positive rate"),
                ValueFunction.MEAN_PROB: _("Mean probability")}[self]


#
# SegXAI
#
class SegXAI(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SegXAI")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["SegXAI contributors"]
        self.parent.helpText = _(
            "Explains why a 3D segmentation model drew what it drew inside a region of interest: which MRI contrast it "
            "relied on (contrast Shapley values per cross-validation fold, with agreement to a clinician's ranking and "
            "the spread across folds) and which regions pushed it towards or away from its answer (region SHAP). "
            "The engine runs in a separate process; results appear as an overlay, segments, a table and a chart, "
            "grouped in one folder per run.")
        self.parent.acknowledgementText = _("SegXAI builds on Captum, SHAP/shapiq, MONAI and nnU-Net.")


#
# Parameter node
#
@parameterNodeWrapper
class SegXAIParameterNode:
    """Everything the panel gathers; saved with the scene."""

    image0: vtkMRMLScalarVolumeNode
    image1: vtkMRMLScalarVolumeNode
    image2: vtkMRMLScalarVolumeNode
    image3: vtkMRMLScalarVolumeNode
    image4: vtkMRMLScalarVolumeNode
    image5: vtkMRMLScalarVolumeNode
    models: str                      # one model path per line (file, folder, or nnU-Net results folder); folds = lines
    trust: bool
    channelNames: str                # from the model, comma separated ("" = unknown)
    modelLabels: str                 # JSON {name: value} from the model
    reference: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode, None]
    roi: vtkMRMLMarkupsROINode
    target: str
    method: Method
    value: ValueFunction
    budget: Annotated[int, WithinRange(0, 10_000_000)]        # 0: the method's default
    seed: Annotated[int, WithinRange(0, 2**31 - 1)]
    device: Annotated[str, Choice(["auto", "cpu", "cuda", "mps"]), Default("auto")]
    preprocess: Annotated[str, Choice(["none", "zscore", "ct"]), Default("none")]
    baseline: Annotated[str, Choice(["zero", "mean", "min"]), Default("zero")]
    regionPlayers: Annotated[str, Choice(["supervoxel", "lattice", "organ", "hybrid"]), Default("supervoxel")]
    nPlayers: Annotated[int, WithinRange(2, 4096), Default(64)]
    cellMm: Annotated[float, WithinRange(1.0, 100.0), Default(10.0)]
    intervention: Annotated[str, Choice(["shift", "baseline"]), Default("shift")]
    maxSamples: Annotated[int, WithinRange(3, 1000), Default(30)]
    topK: Annotated[int, WithinRange(1, 1000), Default(10)]
    outputFolder: Path
    lastResult: str

    def images(self) -> list:
        nodes = [getattr(self, f"image{c}") for c in range(MAX_CHANNELS)]
        count = self.channelCount()
        return nodes[:count] if count else [n for n in nodes if n is not None]

    def channelCount(self) -> int:
        return len([n for n in self.channelNames.split(",") if n.strip()]) if self.channelNames else 0

    def modelPaths(self) -> list[str]:
        return [line.strip() for line in (self.models or "").splitlines() if line.strip()]


#
# Widget
#
class SegXAIWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._runner: EngineRunner | None = None
        self._runBackground = None
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.timeout.connect(self.onPoll)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SegXAI.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SegXAILogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.addModelFileButton.connect("clicked(bool)", self.onAddModelFile)
        self.ui.addModelFolderButton.connect("clicked(bool)", self.onAddModelFolder)
        self.ui.describeModelButton.connect("clicked(bool)", self.onDescribeModel)
        self.ui.placeRoiButton.connect("clicked(bool)", self.onPlaceRoi)
        self.ui.roiFromReferenceButton.connect("clicked(bool)", self.onRoiFromReference)
        self.ui.loadResultButton.connect("clicked(bool)", self.onLoadResult)
        self.ui.targetComboBox.connect("currentTextChanged(QString)", self.onTargetChanged)
        self.ui.progressBar.setVisible(False)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self._runner is not None and self._runner.state == RunState.RUNNING:
            self._runner.cancel()
        self._timer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.image0:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.image0 = first

    def setParameterNode(self, inputParameterNode: Optional[SegXAIParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
            self.updateGUIFromParameterNode()

    # ------------------------------------------------------------------ panel state
    def updateGUIFromParameterNode(self, caller=None, event=None) -> None:
        p = self._parameterNode
        if p is None:
            return
        names = [n.strip() for n in p.channelNames.split(",")] if p.channelNames else []
        chosen = [getattr(p, f"image{c}") is not None for c in range(MAX_CHANNELS)]
        for c in range(MAX_CHANNELS):
            # known channels: one row each; unknown: the rows filled so far plus one empty row
            visible = c < len(names) if names else (c == 0 or chosen[c] or chosen[c - 1])
            getattr(self.ui, f"channelLabel{c}").setVisible(visible)
            getattr(self.ui, f"image{c}Selector").setVisible(visible)
            getattr(self.ui, f"channelLabel{c}").setText(f"{names[c]}:" if c < len(names) else _("Channel {n}:").format(n=c + 1))
        labels = json.loads(p.modelLabels) if p.modelLabels else {}
        wanted = [str(k) for k, v in labels.items() if int(v) > 0] + (["WT", "TC", "ET"] if {"1", "2", "3"} <= {str(v) for v in labels.values()} else [])
        current = [self.ui.targetComboBox.itemText(i) for i in range(self.ui.targetComboBox.count)]
        if wanted != current:
            with _noSignals(self.ui.targetComboBox):
                self.ui.targetComboBox.clear()
                self.ui.targetComboBox.addItems(wanted)
        if self.ui.targetComboBox.currentText != p.target:
            with _noSignals(self.ui.targetComboBox):
                self.ui.targetComboBox.setEditText(p.target)
        # each method shows only its own options
        self.ui.contrastOptionsGroupBox.setVisible(p.method == Method.CONTRAST_SHAPLEY)
        self.ui.regionOptionsGroupBox.setVisible(p.method in (Method.REGION_SHAP, Method.CAUSAL))
        self.ui.causalOptionsGroupBox.setVisible(p.method == Method.CAUSAL)
        lattice = p.regionPlayers == "lattice"
        for widget in (self.ui.cellSizeLabel, self.ui.cellSizeSpinBox):
            widget.setVisible(lattice)
        for widget in (self.ui.nPlayersLabel, self.ui.nPlayersSpinBox):
            widget.setVisible(p.regionPlayers in ("supervoxel", "hybrid"))
        self.ui.roiFromReferenceButton.setEnabled(p.reference is not None and bool(p.target) and p.image0 is not None)
        running = self._runner is not None and self._runner.state == RunState.RUNNING
        problem = self.logic.missingInputs(p)
        self.ui.applyButton.setEnabled(running or not problem)
        self.ui.applyButton.text = _("Cancel") if running else _("Apply")
        self.ui.applyButton.toolTip = _("Stop the running explanation") if running else (problem or _("Explain the model's segmentation inside the ROI"))

    def onTargetChanged(self, text: str) -> None:
        if self._parameterNode is not None and self._parameterNode.target != text:
            self._parameterNode.target = text

    # ------------------------------------------------------------------ inputs
    def _appendModel(self, path: str) -> None:
        if path:
            paths = self._parameterNode.modelPaths()
            if path not in paths:
                self._parameterNode.models = "\n".join([*paths, path])

    def onAddModelFile(self) -> None:
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), _("Model file (TorchScript .pt, state dict)"), "",
                                              _("PyTorch models (*.pt *.pth *.ts *.ckpt);;All files (*)"))
        self._appendModel(path)

    def onAddModelFolder(self) -> None:
        path = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Model folder (MONAI bundle, nnU-Net results, fold)"))
        self._appendModel(path)

    def onDescribeModel(self) -> None:
        paths = self._parameterNode.modelPaths()
        if not paths:
            slicer.util.warningDisplay(_("Add a model first (file or folder)."))
            return
        with slicer.util.tryWithErrorDisplay(_("Could not read the model."), waitCursor=True):
            info = self.logic.describeModel(paths[0], self._parameterNode.trust)
            self.logic.applyModelDescription(self._parameterNode, info)
            self.ui.modelInfoLabel.text = _("{format}: {n} input channels ({channels}); labels: {labels}").format(
                format=info.get("format"), n=len(info.get("channels") or []) or "?", channels=", ".join(info.get("channels") or []) or "?",
                labels=", ".join(f"{k}={v}" for k, v in (info.get("labels") or {}).items()) or "?")

    def onPlaceRoi(self) -> None:
        p = self._parameterNode
        if p.roi is None:
            p.roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", slicer.mrmlScene.GenerateUniqueName("SegXAI ROI"))
            p.roi.CreateDefaultDisplayNodes()
            p.roi.GetDisplayNode().SetFillOpacity(0.2)
        selection = slicer.app.applicationLogic().GetSelectionNode()
        selection.SetReferenceActivePlaceNodeClassName("vtkMRMLMarkupsROINode")
        selection.SetActivePlaceNodeID(p.roi.GetID())
        interaction = slicer.app.applicationLogic().GetInteractionNode()
        interaction.SetPlaceModePersistence(0)
        interaction.SetCurrentInteractionMode(interaction.Place)

    def onRoiFromReference(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not place the ROI from the reference."), waitCursor=True):
            self._parameterNode.roi = self.logic.roiFromReference(self._parameterNode)

    # ------------------------------------------------------------------ run
    def onApplyButton(self) -> None:
        if self._runner is not None and self._runner.state == RunState.RUNNING:
            self._runner.cancel()
            self.ui.statusLabel.text = _("Cancelling…")
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("SegXAI could not start."), waitCursor=True):
            self.logic.ensureDependencies(askConfirmation=True)
            if not p.trust and self.logic.needsTrust(p):
                if not slicer.util.confirmYesNoDisplay(
                        _("Loading this model executes code stored in its files (a Python pickle, bundle expressions or an "
                          "nnU-Net checkpoint). Only continue if you trust where the model came from.\n\nTrust this model?"),
                        windowTitle=_("SegXAI: trust the model?")):
                    return
                p.trust = True
            self._runBackground = p.image0
            self._runner = self.logic.startExplain(p)
            self.ui.logTextEdit.clear()
            self.ui.logTextEdit.appendPlainText(" ".join(self._runner.argv))
            self.ui.progressBar.setVisible(True)
            self.ui.progressBar.setRange(0, 0)  # busy until the first progress event
            self.ui.statusLabel.text = _("Loading models…")
            self._timer.start()
            self.updateGUIFromParameterNode()

    def onPoll(self) -> None:
        runner = self._runner
        if runner is None:
            self._timer.stop()
            return
        for message in runner.poll():
            if message.event is None:
                self.ui.logTextEdit.appendPlainText(message.line)
        fraction = runner.fraction
        if fraction is not None:
            self.ui.progressBar.setRange(0, 1000)
            self.ui.progressBar.setValue(int(1000 * fraction))
            eta = runner.eta_s
            left = "" if eta is None else _(" — about {t} left").format(t=_duration(eta))
            self.ui.progressBar.setFormat(f"{runner.stage} {runner.done_units}/{runner.total_units}{left}")
            self.ui.statusLabel.text = runner.stage
        if not runner.state.finished:
            return
        self._timer.stop()
        self.ui.progressBar.setVisible(False)
        if runner.state == RunState.DONE:
            with slicer.util.tryWithErrorDisplay(_("The result could not be loaded."), waitCursor=True):
                runs = self.logic.loadResult(runner.out_dir, background=self._runBackground, topK=self._parameterNode.topK)
                self._parameterNode.lastResult = str(runner.out_dir)
                self.logic.showRun(runs[0] if runs else None)
                self.ui.statusLabel.text = _("Done in {t}: {n} result(s) loaded.").format(t=_duration(runner.elapsed_s), n=len(runs))
        elif runner.state == RunState.CANCELLED:
            self.ui.statusLabel.text = _("Cancelled; nothing was written.")
        else:
            self.ui.statusLabel.text = _("Failed.")
            slicer.util.errorDisplay(str(runner.error), windowTitle=_("SegXAI"), detailedText="\n".join(runner.log))
        self.updateGUIFromParameterNode()

    def onLoadResult(self) -> None:
        path = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("SegXAI result folder"))
        if path:
            with slicer.util.tryWithErrorDisplay(_("The result could not be loaded."), waitCursor=True):
                runs = self.logic.loadResult(path, background=self._parameterNode.image0, topK=self._parameterNode.topK)
                self.logic.showRun(runs[0] if runs else None)


class _noSignals:
    """Blocks a widget's signals for the duration of a with-block."""

    def __init__(self, widget):
        self.widget = widget

    def __enter__(self):
        self.previous = self.widget.blockSignals(True)

    def __exit__(self, *exc):
        self.widget.blockSignals(self.previous)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


#
# Logic: usable without the widget (batch mode, the self-test)
#
class SegXAILogic(ScriptedLoadableModuleLogic):
    def __init__(self, scene=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._scene = scene

    @property
    def scene(self):
        return self._scene if self._scene is not None else slicer.mrmlScene

    def getParameterNode(self) -> SegXAIParameterNode:
        return SegXAIParameterNode(super().getParameterNode())

    # ---------------------------------------------------------------- checks and dependencies
    @staticmethod
    def missingInputs(p: SegXAIParameterNode) -> str:
        """What still has to be chosen before Apply ("" when nothing)."""
        if not p.modelPaths():
            return _("Add a model (file or folder).")
        images = p.images()
        if not images or any(n is None for n in images):
            return _("Select one volume per model input channel.")
        if p.roi is None:
            return _("Place an ROI (or create it from the reference).")
        if not p.target:
            return _("Choose the target label or region.")
        return ""

    def requirementsPath(self) -> Path:
        here = Path(__file__).resolve().parent
        for candidate in (here / "Resources" / "requirements.txt", here.parent / "Resources" / "requirements.txt"):
            if candidate.exists():
                return candidate
        raise FileNotFoundError("SegXAI's requirements.txt is missing from this installation.")

    def ensureDependencies(self, askConfirmation: bool = True) -> None:
        """torch through the PyTorch extension (PyTorchUtils), the rest through pip; asked first, never at import."""
        try:
            import torch  # noqa: F401
        except ImportError:
            try:
                import PyTorchUtils
            except ImportError:
                raise RuntimeError(_("SegXAI needs the PyTorch extension: install 'PyTorch' from the Extensions Manager and restart Slicer.")) from None
            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
            if not torchLogic.torchInstalled():
                if torchLogic.installTorch(askConfirmation=askConfirmation, torchVersionRequirement=TORCH_REQUIREMENT) is None:
                    raise RuntimeError(_("PyTorch is required. Install it from the PyTorch Utils module and try again."))
        requirements = self.requirementsPath()
        try:
            import slicer.packaging as packaging

            packaging.pip_ensure  # noqa: B018 (Slicer 5.12 and later)
        except (ImportError, AttributeError):  # Slicer before 5.12
            self._pipInstallMissing(requirements, askConfirmation)
            return
        packaging.pip_ensure(packaging.load_requirements(requirements), prompt_install=askConfirmation, requester="SegXAI")

    @staticmethod
    def _pipInstallMissing(requirements: Path, askConfirmation: bool) -> None:
        import importlib.metadata as md

        missing = []
        for line in requirements.read_text().splitlines():
            line = line.split("#")[0].strip()
            if not line:
                continue
            name = line.split(">")[0].split("=")[0].split("<")[0].strip()
            try:
                md.version(name)
            except md.PackageNotFoundError:
                missing.append(line)
        if missing:
            if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                    _("SegXAI needs these Python packages: {p}. Install them now?").format(p=", ".join(missing))):
                raise RuntimeError(_("SegXAI cannot run without its Python packages."))
            slicer.util.pip_install(missing)

    # ---------------------------------------------------------------- engine processes
    @staticmethod
    def pythonExecutable() -> str:
        """PythonSlicer (Slicer's Python with Slicer's environment) for the engine subprocess."""
        found = shutil.which("PythonSlicer")
        if found:
            return found
        home = Path(getattr(getattr(slicer, "app", None), "slicerHome", "") or ".")
        for candidate in (home / "bin" / "PythonSlicer", home / "bin" / "PythonSlicer.exe"):
            if candidate.exists():
                return str(candidate)
        return sys.executable

    @staticmethod
    def engineEnvironment() -> dict:
        try:
            base = slicer.util.startupEnvironment()
        except Exception:
            base = dict(os.environ)
        return engine_environment(base)

    def describeModel(self, path: str, trust: bool = False, timeout: float = 180) -> dict:
        runner = EngineRunner(describe_model_argv(path, self.pythonExecutable(), trust), env=self.engineEnvironment()).start()
        state = runner.waitForCompletion(timeout)
        text = "\n".join(runner.log)
        if state != RunState.DONE:
            raise RuntimeError(str(runner.error) if runner.error else text[-2000:])
        return json.loads(text[text.index("{"): text.rindex("}") + 1])

    @staticmethod
    def applyModelDescription(p: SegXAIParameterNode, info: dict) -> None:
        channels = list(info.get("channels") or [])
        if not channels and info.get("in_channels"):
            channels = [f"channel {c + 1}" for c in range(int(info["in_channels"]))]
        if len(channels) > MAX_CHANNELS:
            raise ValueError(_("The model takes {n} input channels; the panel offers {m}. Use `segxai explain` on the command line.").format(
                n=len(channels), m=MAX_CHANNELS))
        p.channelNames = ",".join(channels)
        p.modelLabels = json.dumps(info.get("labels") or {})
        if info.get("needs_trust") is False:
            p.trust = False
        if not p.target:
            labels = info.get("labels") or {}
            foreground = [k for k, v in labels.items() if int(v) > 0]
            p.target = foreground[0] if foreground else "1"

    def needsTrust(self, p: SegXAIParameterNode) -> bool:
        """True when any model's format executes code on load (asks the engine, without trust)."""
        for path in p.modelPaths():
            try:
                if self.describeModel(path, trust=False).get("needs_trust"):
                    return True
            except Exception:
                return True  # unreadable without trust: ask
        return False

    def roiFromReference(self, p: SegXAIParameterNode, marginMm: float = 10.0):
        """An axis-aligned ROI around the target in the reference segmentation (with a margin)."""
        geometry = mrml_adapter.volume_geometry(p.image0)
        labelValues = json.loads(p.modelLabels) if p.modelLabels else {}
        labels = mrml_adapter.labels_from_node(p.reference, geometry, labelValues)
        values = mrml_adapter.target_label_values(p.target, labelValues)
        low, high = mrml_adapter.bounding_box_ras(np.isin(labels, values), geometry, marginMm)
        return mrml_adapter.add_roi_node(self.scene, low, high, f"SegXAI ROI {p.target}")

    def outputFolder(self, p: SegXAIParameterNode) -> Path:
        base = Path(str(p.outputFolder)) if p.outputFolder and str(p.outputFolder) not in ("", ".") else \
            Path(slicer.app.temporaryPath) / "SegXAI"
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        name = f"{p.method.value}-{mrml_adapter._safe(p.target)}-{stamp}"
        out, n = base / name, 2
        while out.exists() or Path(f"{out}-inputs").exists():
            out, n = base / f"{name}-{n}", n + 1
        return out

    def explainRequest(self, p: SegXAIParameterNode, out: Path, inputs: Path):
        """Writes the scene's inputs next to the result folder and returns the engine request (imports torch)."""
        from SegXAILib.models.options import ModelOptions
        from SegXAILib.request import CausalOptions, ExplainRequest, RegionOptions

        labelValues = json.loads(p.modelLabels) if p.modelLabels else {}
        names = [n.strip() for n in p.channelNames.split(",")] if p.channelNames else None
        files = mrml_adapter.write_case_files(inputs, p.images(), p.roi, p.reference, names, labelValues)
        region = RegionOptions(features=p.regionPlayers, top_k=int(p.topK))
        if p.regionPlayers == "lattice":
            region.cell_mm = float(p.cellMm)
        elif p.regionPlayers in ("supervoxel", "hybrid"):
            region.n_players = int(p.nPlayers)
        if p.regionPlayers in ("organ", "hybrid"):  # organs come from the reference, in the model's label values
            if not files.reference:
                raise ValueError(_("Organ regions need a reference segmentation: select one under Inputs."))
            region.labels = files.reference
            region.label_names = {int(v): str(k) for k, v in labelValues.items() if int(v) > 0} or None
        causal = CausalOptions(intervention=p.intervention, max_samples=int(p.maxSamples))
        causal.min_samples = min(causal.min_samples, causal.max_samples)
        return ExplainRequest(**files.request_fields(), models=p.modelPaths(), out=str(out), targets=[p.target],
                              method=p.method.value, value=p.value.value, seed=int(p.seed), budget=int(p.budget) or None,
                              device=p.device, baseline=p.baseline,
                              model_options=ModelOptions(trust=bool(p.trust), channels=names, preprocess=p.preprocess),
                              region=region, causal=causal)

    def startExplain(self, p: SegXAIParameterNode) -> EngineRunner:
        problem = self.missingInputs(p)
        if problem:
            raise ValueError(problem)
        out = self.outputFolder(p)
        request = self.explainRequest(p, out, Path(f"{out}-inputs"))
        argv = explain_argv(request, python=self.pythonExecutable())
        logging.info("SegXAI: %s", " ".join(argv))
        return EngineRunner(argv, env=self.engineEnvironment(), cwd=str(out.parent)).start()

    def run(self, p: SegXAIParameterNode, timeout: float = 3600):
        """Batch use: runs the engine to the end and loads its result; raises with the engine's problem and fix."""
        runner = self.startExplain(p)
        state = runner.waitForCompletion(timeout)
        if state != RunState.DONE:
            raise RuntimeError(str(runner.error) if runner.error else _("The run was cancelled."))
        p.lastResult = str(runner.out_dir)
        return self.loadResult(runner.out_dir, background=p.image0, topK=p.topK)

    # ---------------------------------------------------------------- results
    def loadResult(self, outDir, background=None, topK: int = 10):
        return mrml_adapter.load_results(self.scene, outDir, background=background, top_k=topK)

    @staticmethod
    def showRun(run) -> None:
        """Puts the run's chart in the layout and shows its folder; the overlay is already in the slice views."""
        if run is None:
            return
        chart = run.nodes.get("chart")
        plots = getattr(getattr(slicer, "modules", None), "plots", None)
        if chart is not None and plots is not None:
            plots.logic().ShowChartInLayout(chart)
        shNode = run.scene.GetSubjectHierarchyNode()
        if hasattr(shNode, "SetItemExpanded"):
            shNode.SetItemExpanded(run.folder_item, True)


#
# Self-test: Slicer --no-main-window --testing --python-code "slicer.util.selectModule('SegXAI'); ..."
#
class SegXAITest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ContrastShapleyThroughTheLogic()

    def _knownCase(self, folder: Path):
        """Three contrasts on a small grid; the model needs A and B together and never reads C, so the contrast
        Shapley values are exactly (1/2, 1/2, 0) (the shipped demo case needs minutes on a CPU; this needs seconds)."""
        import torch

        class ThresholdSum(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = torch.nn.Conv3d(3, 1, 3, padding=1, bias=False)
                with torch.no_grad():
                    self.conv.weight.copy_(torch.tensor([1.0, 1.0, 0.0]).view(1, 3, 1, 1, 1).expand(1, 3, 3, 3, 3) / 27)

            def forward(self, x):
                fg = self.conv(x) - 1.5
                return torch.cat([torch.zeros_like(fg), fg], dim=1)

        path = folder / "model.pt"
        torch.jit.save(torch.jit.script(ThresholdSum().eval()), str(path),
                       _extra_files={"segxai.json": json.dumps({"channels": ["A", "B", "C"], "labels": {"background": 0, "blob": 1}})})
        shape = (24, 20, 16)
        i, j, k = np.indices(shape)
        blob = (((i - 12) / 5.0) ** 2 + ((j - 10) / 4.0) ** 2 + ((k - 8) / 3.0) ** 2 <= 1).astype(np.float32)
        noise = np.random.default_rng(0).normal(size=shape).astype(np.float32)
        return [2 * blob, 2 * blob, noise], np.diag([1.5, 1.5, 2.0, 1.0]), [str(path)], ["A", "B", "C"], "blob", \
            {"A": 0.5, "B": 0.5, "C": 0.0}

    def test_ContrastShapleyThroughTheLogic(self):
        self.delayDisplay("SegXAI: contrast Shapley through the module logic")
        try:
            import nibabel  # noqa: F401
            import nrrd  # noqa: F401
            import scipy  # noqa: F401
            import torch  # noqa: F401
        except ImportError as exc:
            self.delayDisplay(f"Skipped: SegXAI's Python packages are not installed ({exc}); press Apply once to install them.")
            return
        from SegXAILib.volumes import Geometry

        folder = Path(tempfile.mkdtemp(prefix="SegXAITest-"))
        images, affine, models, channels, target, expected = self._knownCase(folder)
        geometry = Geometry(tuple(images[0].shape), affine)
        logic = SegXAILogic()
        p = logic.getParameterNode()
        for c, (name, array) in enumerate(zip(channels, images)):
            setattr(p, f"image{c}", mrml_adapter.add_volume(slicer.mrmlScene, array, geometry, name))
        p.models = "\n".join(models + models)  # two "folds": the spread across folds is zero, the table has fold columns
        p.channelNames = ",".join(channels)
        p.target = target
        p.method = Method.CONTRAST_SHAPLEY
        p.value = ValueFunction.DICE
        p.device = "cpu"
        p.trust = True
        p.outputFolder = folder / "results"
        corner = (affine @ [0, 0, 0, 1])[:3]
        far = (affine @ [*(s - 1 for s in geometry.shape), 1])[:3]
        p.roi = mrml_adapter.add_roi_node(slicer.mrmlScene, corner + 0.2 * (far - corner), corner + 0.8 * (far - corner))

        runs = logic.run(p, timeout=900)
        self.assertEqual(len(runs), 1)
        run = runs[0]
        for role in ("parameters", "table", "chart", "segmentation"):
            self.assertIn(role, run.nodes)
        names = mrml_adapter.table_column(run.nodes["table"], "player")
        self.assertEqual(sorted(names), sorted(channels))
        self.assertEqual(names, run.result["ranking"])
        values = dict(zip(names, mrml_adapter.table_column(run.nodes["table"], "value")))
        for name, value in expected.items():
            self.assertAlmostEqual(values[name], value, places=5)
        self.assertEqual(run.nodes["chart"].GetNumberOfPlotSeriesNodes(), 3)  # mean + one per fold
        shNode = slicer.mrmlScene.GetSubjectHierarchyNode()
        self.assertEqual(shNode.GetItemParent(shNode.GetItemByDataNode(run.nodes["table"])), run.folder_item)
        self.assertEqual(run.parameters()["request"]["models"], models + models)
        logic.showRun(run)
        self.delayDisplay("SegXAI self-test passed")

