"""SegXAI: explain a 3D segmentation model inside a region of interest, from 3D Slicer.

Thin by design: the panel (widget + parameter node) gathers inputs and shows outputs; the logic writes the scene's
inputs to files (SegXAILib.mrml_adapter), starts the engine in a PythonSlicer subprocess (SegXAILib.runner), and
loads the result folder back into the scene. A crash or out-of-memory in the model never takes Slicer down, the
GUI stays responsive (a QTimer polls every engine process on the main thread, the only thread that touches MRML;
SegXAIPanel.runs), and Cancel ends the engine's whole process tree. Helpers live in the SegXAIPanel package.
"""

import enum
import json
import logging
import os
import shutil
import sys
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
    """SegXAILib sits beside this file once built; in a source checkout (--additional-module-paths SegXAI) it is one
    up. SegXAIPanel always sits beside this file (Slicer puts the module folder on sys.path; pytest does not)."""
    here = Path(__file__).resolve().parent
    if str(here) not in sys.path:
        sys.path.insert(0, str(here))
    try:
        import SegXAILib  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(here.parent))


_importLib()
from SegXAIPanel.install import check_python  # noqa: E402 (plain Python: runs on any Slicer)

try:  # Slicer 5.8 ships Python 3.9: say which Slicer to install rather than fail on an import
    check_python()
    PYTHON_PROBLEM = ""
except Exception as exc:
    PYTHON_PROBLEM = str(exc)
if not PYTHON_PROBLEM:
    # Only the light parts of SegXAILib are imported with the module: numpy, vtk and MRML, never torch or the engine.
    from SegXAILib import mrml_adapter
    from SegXAILib.runner import EngineRunner, RunState, engine_environment, explain_argv
    from SegXAIPanel import install, panelstate, requests, sampledata, selftest
    from SegXAIPanel.runs import PanelRuns
    from SegXAIPanel.trust import TrustStore

MAX_CHANNELS = 6


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
        self.parent.contributors = ["SegXAI contributors (https://github.com/SegXAI/SegXAI)"]
        self.parent.helpText = _(
            "Explains why a 3D segmentation model drew what it drew inside a region of interest: which MRI contrast it "
            "relied on (contrast Shapley values per cross-validation fold, with agreement to a clinician's ranking and "
            "the spread across folds) and which regions pushed it towards or away from its answer (region SHAP). "
            "The engine runs in a separate process; results appear as an overlay, segments, a table and a chart, "
            "grouped in one folder per run. Try it on the demo case: Sample Data, SegXAI, then 'Demo models'.")
        self.parent.acknowledgementText = _(
            "SegXAI uses PyTorch (through the PyTorch extension), MONAI (bundles, sliding-window inference), nnU-Net v2 "
            "(results folders), shapiq (Shapley estimators), SciPy, scikit-image (supervoxels), NumPy, nibabel and "
            "pynrrd, and 3D Slicer's MRML, Segmentations, Tables and Plots.")
        if not PYTHON_PROBLEM:
            slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData() -> None:
    """The demo case in Sample Data (category SegXAI); skipped quietly where SampleData is not loaded."""
    try:
        sampledata.register(str(Path(__file__).resolve().parent / "Resources" / "Icons" / "SegXAI.png"))
    except ImportError:
        logging.info("SegXAI: the SampleData module is not loaded; the demo case is not registered.")


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
        self.runs: PanelRuns | None = None
        self._partialShown = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.timeout.connect(self.onPoll)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        if PYTHON_PROBLEM:
            self.layout.addWidget(qt.QLabel(PYTHON_PROBLEM))
            slicer.util.errorDisplay(PYTHON_PROBLEM, windowTitle=_("SegXAI"))
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SegXAI.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SegXAILogic()
        self.runs = PanelRuns(slicer.mrmlScene, self.logic.pythonExecutable(), self.logic.engineEnvironment())

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.addModelFileButton.connect("clicked(bool)", self.onAddModelFile)
        self.ui.addModelFolderButton.connect("clicked(bool)", self.onAddModelFolder)
        self.ui.removeModelButton.connect("clicked(bool)", self.onRemoveModels)
        self.ui.demoModelsButton.connect("clicked(bool)", self.onDemoModels)
        self.ui.describeModelButton.connect("clicked(bool)", self.onDescribeModel)
        self.ui.placeRoiButton.connect("clicked(bool)", self.onPlaceRoi)
        self.ui.roiFromReferenceButton.connect("clicked(bool)", self.onRoiFromReference)
        self.ui.loadResultButton.connect("clicked(bool)", self.onLoadResult)
        self.ui.targetComboBox.connect("currentTextChanged(QString)", self.onTargetChanged)
        self.ui.progressBar.setVisible(False)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._timer.stop()
        if self.runs is not None:
            self.runs.close()
        self.removeObservers()

    def enter(self) -> None:
        if not PYTHON_PROBLEM:
            self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)  # PanelRuns has cancelled a run: its inputs are leaving with the scene

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
        listed = [self.ui.modelsListWidget.item(i).text() for i in range(self.ui.modelsListWidget.count)]
        if listed != p.modelPaths():  # rewritten only on a real change: selection and scrolling survive
            self.ui.modelsListWidget.clear()
            self.ui.modelsListWidget.addItems(p.modelPaths())
        names = [n.strip() for n in p.channelNames.split(",")] if p.channelNames else []
        rows = panelstate.channel_rows(names, [getattr(p, f"image{c}") is not None for c in range(MAX_CHANNELS)])
        for c, (visible, label) in enumerate(rows):
            getattr(self.ui, f"channelLabel{c}").setVisible(visible)
            getattr(self.ui, f"image{c}Selector").setVisible(visible)
            getattr(self.ui, f"channelLabel{c}").setText(label or _("Channel {n}:").format(n=c + 1))
        wanted = panelstate.target_choices(json.loads(p.modelLabels) if p.modelLabels else {})
        current = [self.ui.targetComboBox.itemText(i) for i in range(self.ui.targetComboBox.count)]
        if wanted != current:
            with panelstate.NoSignals(self.ui.targetComboBox):
                self.ui.targetComboBox.clear()
                self.ui.targetComboBox.addItems(wanted)
        if self.ui.targetComboBox.currentText != p.target:
            with panelstate.NoSignals(self.ui.targetComboBox):
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
        running = self.runs.running
        problem = self.logic.missingInputs(p)
        self.ui.applyButton.setEnabled(running or not problem)
        self.ui.applyButton.text = _("Cancel") if running else _("Apply")
        self.ui.applyButton.toolTip = _("Stop the running explanation") if running else (problem or _("Explain the model's segmentation inside the ROI"))

    def onTargetChanged(self, text: str) -> None:
        if self._parameterNode is not None and self._parameterNode.target != text:
            self._parameterNode.target = text

    # ------------------------------------------------------------------ inputs
    def _setModels(self, paths: list[str]) -> None:
        self._parameterNode.models = "\n".join(dict.fromkeys(p for p in paths if p))

    def onAddModelFile(self) -> None:
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), _("Model file (TorchScript .pt, state dict)"), "",
                                              _("PyTorch models (*.pt *.pth *.ts *.ckpt);;All files (*)"))
        self._setModels([*self._parameterNode.modelPaths(), path])

    def onAddModelFolder(self) -> None:
        path = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Model folder (MONAI bundle, nnU-Net results, fold)"))
        self._setModels([*self._parameterNode.modelPaths(), path])

    def onRemoveModels(self) -> None:
        selected = {item.text() for item in self.ui.modelsListWidget.selectedItems()}
        self._setModels([p for p in self._parameterNode.modelPaths() if p not in selected])

    def onDemoModels(self) -> None:
        self._setModels([str(p) for p in sampledata.demo_models()])
        self.onDescribeModel()

    def onDescribeModel(self) -> None:
        paths = self._parameterNode.modelPaths()
        if not paths:
            slicer.util.warningDisplay(_("Add a model first (file or folder)."))
            return
        self.ui.modelInfoLabel.text = _("Reading the model…")
        self.runs.describe(paths[:1], then=self._onDescribed)
        self._timer.start()

    def _onDescribed(self) -> None:
        p = self._parameterNode
        path = p.modelPaths()[0] if p is not None and p.modelPaths() else ""
        if not path:
            return
        if path in self.runs.description_errors:
            self.ui.modelInfoLabel.text = _("Could not read the model.")
            slicer.util.errorDisplay(self.runs.description_errors[path], windowTitle=_("SegXAI"))
            return
        info = self.runs.descriptions[path]
        with slicer.util.tryWithErrorDisplay(_("Could not read the model."), waitCursor=False):
            self.logic.applyModelDescription(p, info)
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
    def onApplyButton(self, checked=False, described=False) -> None:
        if self.runs.running:
            self.runs.runner.cancel()
            self.ui.statusLabel.text = _("Cancelling…")
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("SegXAI could not start."), waitCursor=True):
            self.logic.ensureDependencies(p.modelPaths(), askConfirmation=True)
            unknown = [m for m in p.modelPaths() if m not in self.runs.descriptions]
            if unknown and not described:  # the formats decide which models need trust: ask the engine, without blocking
                self.ui.statusLabel.text = _("Reading the models…")
                self.runs.describe(unknown, then=lambda: self.onApplyButton(described=True))
                self._timer.start()
                return
            store = self.logic.trustStore()
            for model in store.untrusted(p.modelPaths(), self.runs.descriptions):
                if not slicer.util.confirmYesNoDisplay(
                        _("Loading {model} executes code stored in its files (a Python pickle, bundle expressions or an "
                          "nnU-Net checkpoint). Only continue if you trust where this model came from.\n\nTrust this model?").format(model=model),
                        windowTitle=_("SegXAI: trust the model?")):
                    return
                store.trust(model)
            runner = self.runs.start(self.logic.startExplain(p, trust=True), background=p.image0, top_k=p.topK)
            self.ui.logTextEdit.clear()
            self.ui.logTextEdit.appendPlainText(" ".join(runner.argv))
            self.ui.progressBar.setVisible(True)
            self.ui.progressBar.setRange(0, 0)  # busy until the first progress event
            self.ui.statusLabel.text = _("Loading models…")
            self._timer.start()
            self.updateGUIFromParameterNode()

    def onPoll(self) -> None:
        runner = self.runs.runner
        finishing = self.runs.running
        with slicer.util.tryWithErrorDisplay(_("The result could not be loaded."), waitCursor=False):
            for message in self.runs.poll():
                if message.event is None:
                    self.ui.logTextEdit.appendPlainText(message.line)
            if self.runs.run is not None and self._partialShown is not self.runs.run:  # first anytime result: chart in layout
                self._partialShown = self.runs.run
                self.logic.showRun(self.runs.run)
        if not self.runs.busy:
            self._timer.stop()
        if runner is None or not finishing:
            return
        fraction = runner.fraction
        if fraction is not None:
            self.ui.progressBar.setRange(0, 1000)
            self.ui.progressBar.setValue(int(1000 * fraction))
            eta = runner.eta_s
            left = "" if eta is None else _(" — about {t} left").format(t=panelstate.duration(eta))
            self.ui.progressBar.setFormat(f"{runner.stage} {runner.done_units}/{runner.total_units}{left}")
            self.ui.statusLabel.text = self.runs.status or runner.stage
        if not runner.state.finished:
            return
        self.ui.progressBar.setVisible(False)
        if self.runs.scene_closed:
            self.ui.statusLabel.text = self.runs.status
            slicer.util.warningDisplay(self.runs.status, windowTitle=_("SegXAI"))
        elif runner.state == RunState.DONE:
            if self._parameterNode is not None:
                self._parameterNode.lastResult = str(runner.out_dir)
            self.logic.showRun(self.runs.runs[0] if self.runs.runs else None)
            self.ui.statusLabel.text = _("Done in {t}: {n} result(s) loaded.").format(t=panelstate.duration(runner.elapsed_s), n=len(self.runs.runs))
        elif runner.state == RunState.CANCELLED:
            self.ui.statusLabel.text = self.runs.status or _("Cancelled; nothing was written.")
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

    def ensureDependencies(self, modelPaths: list = (), askConfirmation: bool = True) -> None:
        """Asked first, never at import; torch is never replaced (SegXAIPanel.install)."""
        install.ensure(self.requirementsPath(), list(modelPaths), askConfirmation)

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

    @staticmethod
    def trustStore() -> TrustStore:
        """Per user and machine, beside Slicer's settings: trust never travels inside a scene."""
        settings = Path(slicer.app.userSettings().fileName()).parent
        return TrustStore(settings / "SegXAI" / "trusted-models.json")

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
        if not p.target:
            labels = info.get("labels") or {}
            foreground = [k for k, v in labels.items() if int(v) > 0]
            p.target = foreground[0] if foreground else "1"

    def roiFromReference(self, p: SegXAIParameterNode, marginMm: float = 10.0):
        """An axis-aligned ROI around the target in the reference segmentation (with a margin)."""
        geometry = mrml_adapter.volume_geometry(p.image0)
        labelValues = json.loads(p.modelLabels) if p.modelLabels else {}
        labels = mrml_adapter.labels_from_node(p.reference, geometry, labelValues)
        values = mrml_adapter.target_label_values(p.target, labelValues)
        low, high = mrml_adapter.bounding_box_ras(np.isin(labels, values), geometry, marginMm)
        return mrml_adapter.add_roi_node(self.scene, low, high, f"SegXAI ROI {p.target}")

    def outputFolder(self, p: SegXAIParameterNode) -> Path:
        return requests.output_folder(p, Path(slicer.app.temporaryPath) / "SegXAI" if hasattr(slicer, "app") else Path.cwd())

    def explainRequest(self, p: SegXAIParameterNode, out: Path, inputs: Path, trust: bool = False):
        return requests.explain_request(p, out, inputs, trust)

    def startExplain(self, p: SegXAIParameterNode, trust: bool = False) -> EngineRunner:
        """`trust`: the caller has the user's trust for every model that needs it (SegXAIPanel.trust)."""
        problem = self.missingInputs(p)
        if problem:
            raise ValueError(problem)
        out = self.outputFolder(p)
        request = self.explainRequest(p, out, Path(f"{out}-inputs"), trust)
        argv = explain_argv(request, python=self.pythonExecutable())
        logging.info("SegXAI: %s", " ".join(argv))
        return EngineRunner(argv, env=self.engineEnvironment(), cwd=str(out.parent)).start()

    def run(self, p: SegXAIParameterNode, timeout: float = 3600, trust: bool = False):
        """Batch use: runs the engine to the end and loads its result; raises with the engine's problem and fix."""
        runner = self.startExplain(p, trust)
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
# Self-test (ctest: slicer_add_python_unittest). Its steps live in SegXAIPanel.selftest, which pytest runs too.
#
class SegXAITest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_PartialThenFinalResultWithSlicersReaders()
        missing = selftest.engine_packages_missing()
        if missing:  # ctest's Slicer has no packages and installs none in testing mode; the part above still ran
            self.delayDisplay(f"Engine runs not tested: SegXAI's packages are not installed ({', '.join(missing)}).")
            return
        self.setUp()
        self.test_ContrastShapleyThroughTheLogic()
        self.setUp()
        self.test_SampleDataContrastShapley()

    def _demoCase(self) -> list:
        import SampleData

        registerSampleData()
        nodes = SampleData.SampleDataLogic().downloadSample("SegXAIBrainDemo")
        self.assertEqual(len(nodes), 5)
        return nodes

    def _wait(self, runs: PanelRuns, timeout: float = 900) -> None:
        import time

        end = time.monotonic() + timeout
        while runs.runner.state == RunState.RUNNING and time.monotonic() < end:
            runs.poll()
            slicer.app.processEvents()
            time.sleep(0.05)
        runs.poll()

    def test_PartialThenFinalResultWithSlicersReaders(self):
        """No packages needed: the demo case from Sample Data, a process speaking the engine's event protocol, a partial
        result and then the final one loaded into the same overlay, table and chart."""
        self.delayDisplay("SegXAI: partial and final results through the panel's run controller")
        t1 = self._demoCase()[0]
        folder = Path(slicer.app.temporaryPath) / "SegXAITest-partial"
        shutil.rmtree(folder, ignore_errors=True)
        values = {"T1": 0.1, "T1c": 0.3, "T2": 0.2, "FLAIR": 0.4}
        partial = selftest.write_result_folder(slicer.mrmlScene, folder / "run" / "partial", t1, values, 0.5)
        final = selftest.write_result_folder(slicer.mrmlScene, folder / "run-final", t1, values, 1.0)
        runs = PanelRuns(slicer.mrmlScene, SegXAILogic.pythonExecutable())
        runs.start(EngineRunner(selftest.stand_in_engine_argv(final, [partial], SegXAILogic.pythonExecutable())).start(), background=t1)
        self._wait(runs, 120)
        runs.close()
        self.assertEqual(runs.runner.state, RunState.DONE, "\n".join(runs.runner.log))
        self.assertEqual(runs.partials, 1)
        run = runs.runs[0]
        self.assertEqual(selftest.check_run(run, list(values)), [])
        self.assertEqual(run.nodes["attribution"].GetAttribute(mrml_adapter.ATTR_RESULT_DIR), str(final.resolve()))
        self.assertEqual(len(mrml_adapter.find_runs(slicer.mrmlScene)), 1)  # refreshed in place, not a second run
        SegXAILogic.showRun(run)

    def test_ContrastShapleyThroughTheLogic(self):
        self.delayDisplay("SegXAI: contrast Shapley through the module logic (exact values known)")
        folder = Path(slicer.app.temporaryPath) / "SegXAITest-known"
        shutil.rmtree(folder, ignore_errors=True)
        logic = SegXAILogic()
        p = logic.getParameterNode()
        models, channels, expected = selftest.set_known_case(slicer.mrmlScene, p, folder)
        p.method, p.value = Method.CONTRAST_SHAPLEY, ValueFunction.DICE
        run = logic.run(p, timeout=900)[0]
        self.assertEqual(selftest.check_run(run, channels), [])
        values = dict(zip(mrml_adapter.table_column(run.nodes["table"], "player"), mrml_adapter.table_column(run.nodes["table"], "value")))
        for name, value in expected.items():
            self.assertAlmostEqual(values[name], value, places=5)
        self.assertEqual(run.nodes["chart"].GetNumberOfPlotSeriesNodes(), 3)  # mean + one per fold
        self.assertEqual(run.parameters()["request"]["models"], models)

    def test_SampleDataContrastShapley(self):
        """As a first-time user: the Sample Data demo case, one demo fold, a short contrast Shapley around the tumour."""
        self.delayDisplay("SegXAI: contrast Shapley on the Sample Data demo case")
        nodes = self._demoCase()
        logic = SegXAILogic()
        p = logic.getParameterNode()
        p.models = str(sampledata.demo_models()[0])
        logic.applyModelDescription(p, {"channels": list(sampledata.CHANNELS), "labels": {"background": 0, "necrosis": 1, "oedema": 2, "enhancing": 3}})
        for c, node in enumerate(nodes[:4]):
            setattr(p, f"image{c}", node)
        p.reference, p.target, p.device = nodes[4], "WT", "cpu"
        p.method, p.value = Method.CONTRAST_SHAPLEY, ValueFunction.DICE
        p.outputFolder = Path(slicer.app.temporaryPath) / "SegXAITest-sampledata"
        p.roi = logic.roiFromReference(p, marginMm=4.0)
        run = logic.run(p, timeout=1800, trust=True)[0]  # the shipped demo bundle: trusted by the test that ships it
        self.assertEqual(selftest.check_run(run, list(sampledata.CHANNELS)), [])
        self.assertIn("segmentation", run.nodes)
        self.delayDisplay("SegXAI self-test passed")
