"""The Slicer module without Slicer's GUI: a static check that its files are complete and consistent, and its logic
run headless (Qt and the scripted-module base classes stubbed; MRML, the engine subprocess and the CLI real)."""

from __future__ import annotations

import ast
import enum
import importlib.util
import json
import re
import sys
import types
import typing
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULE = ROOT / "SegXAI"
UI = MODULE / "Resources" / "UI" / "SegXAI.ui"
SOURCE = MODULE / "SegXAI.py"


def _cmake_list(path: Path, variable: str) -> list[str]:
    text = path.read_text()
    match = re.search(rf"set\(\s*{variable}\s+(.*?)\)", text, re.S)
    assert match, f"{variable} not set in {path}"
    return [t for t in match.group(1).split() if not t.startswith("#")]


def _ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI).getroot().iter("widget")}


def _bindings() -> dict[str, str]:
    """{widget name: parameter name} of every widget with a SlicerParameterName property."""
    out = {}
    for name, widget in _ui_widgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                out[name] = prop.find("string").text
    return out


def _parameter_fields() -> dict[str, ast.expr]:
    tree = ast.parse(SOURCE.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SegXAIParameterNode")
    return {n.target.id: n.annotation for n in cls.body if isinstance(n, ast.AnnAssign)}


def _max_channels() -> int:
    tree = ast.parse(SOURCE.read_text())
    return next(n.value.value for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "MAX_CHANNELS")


def test_every_ui_name_the_module_uses_exists():
    widgets = _ui_widgets()
    used = set()
    tree = ast.parse(SOURCE.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui" \
                and isinstance(node.value.value, ast.Name) and node.value.value.id == "self":
            used.add(node.attr)
        # getattr(self.ui, f"channelLabel{c}") for c < MAX_CHANNELS
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "getattr" and len(node.args) >= 2 \
                and isinstance(node.args[0], ast.Attribute) and node.args[0].attr == "ui":
            spec = node.args[1]
            assert isinstance(spec, ast.JoinedStr), "getattr(self.ui, ...) must use an f-string the check can expand"
            template = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in spec.values)
            used.update(template.format(c) for c in range(_max_channels()))
    assert used, "no self.ui.<name> found"
    missing = sorted(used - set(widgets))
    assert not missing, f"used in SegXAI.py but absent from SegXAI.ui: {missing}"


def test_every_bound_parameter_exists_and_suits_its_widget():
    fields = _parameter_fields()
    widgets = _ui_widgets()
    bindings = _bindings()
    assert len(bindings) >= 20
    unknown = {w: p for w, p in bindings.items() if p not in fields}
    assert not unknown, f"widgets bound to parameters that SegXAIParameterNode lacks: {unknown}"
    assert len(set(bindings.values())) == len(bindings), "a parameter is bound to two widgets"
    for widget_name, param in bindings.items():
        cls = widgets[widget_name].get("class")
        annotation = ast.unparse(fields[param])
        if cls == "qMRMLNodeComboBox":
            types_ = [s.text for s in widgets[widget_name].find("property[@name='nodeTypes']").iter("string")]
            assert all(t in annotation for t in types_), (widget_name, types_, annotation)
        elif cls in ("QComboBox", "ctkComboBox"):
            assert "Choice" in annotation or annotation in ("Method", "ValueFunction"), (widget_name, annotation)
        elif cls in ("QSpinBox",):
            assert annotation.startswith("Annotated[int") or annotation == "int", (widget_name, annotation)
        elif cls in ("QDoubleSpinBox", "ctkSliderWidget"):
            assert annotation.startswith("Annotated[float") or annotation == "float", (widget_name, annotation)
        elif cls in ("QCheckBox", "ctkCheckBox"):
            assert annotation == "bool", (widget_name, annotation)
        elif cls in ("QLineEdit", "QTextEdit", "QLabel"):
            assert annotation == "str", (widget_name, annotation)
        elif cls == "ctkPathLineEdit":
            assert annotation == "Path", (widget_name, annotation)
        else:
            pytest.fail(f"{widget_name}: no parameter-node connector for {cls}")
    # the node selectors get the scene from the module widget
    connections = {c.findtext("receiver") for c in ET.parse(UI).getroot().iter("connection") if c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    selectors = {n for n, w in widgets.items() if w.get("class") == "qMRMLNodeComboBox"}
    assert selectors <= connections, selectors - connections
    for c in range(_max_channels()):
        assert bindings[f"image{c}Selector"] == f"image{c}"


def _enum_values(name: str) -> list[str]:
    tree = ast.parse(SOURCE.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)
    return [n.value.value for n in cls.body if isinstance(n, ast.Assign)]


def test_panel_choices_are_what_the_engine_accepts():
    from SegXAILib import cli
    from SegXAILib.players import KINDS
    from SegXAILib.values import VALUE_FUNCTIONS

    explain = cli.build_parser()._subparsers._group_actions[0].choices["explain"]
    choices = {a.dest: a.choices for a in explain._actions}
    assert set(_enum_values("Method")) <= set(choices["method"])
    assert set(_enum_values("ValueFunction")) == set(VALUE_FUNCTIONS)
    fields = {name: ast.unparse(annotation) for name, annotation in _parameter_fields().items()}
    for param, dest in (("device", "device"), ("preprocess", "preprocess"), ("baseline", "baseline"), ("intervention", "intervention")):
        offered = ast.literal_eval(re.search(r"Choice\((\[.*?\])\)", fields[param]).group(1))
        assert set(offered) <= set(choices[dest]), (param, offered, choices[dest])
    offered = ast.literal_eval(re.search(r"Choice\((\[.*?\])\)", fields["regionPlayers"]).group(1))
    assert set(offered) <= set(KINDS)


def test_ui_custom_widgets_are_declared():
    root = ET.parse(UI).getroot()
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    custom = {c for c in used if not c.startswith("Q")}
    assert custom <= declared, custom - declared


def test_every_shipped_file_is_listed_in_cmake():
    scripts = _cmake_list(ROOT / "CMakeLists.txt", "SEGXAILIB_PYTHON_SCRIPTS")
    resources = _cmake_list(ROOT / "CMakeLists.txt", "SEGXAILIB_RESOURCES")
    on_disk = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "SegXAILib").rglob("*.py") if "__pycache__" not in p.parts)
    missing = [p for p in on_disk if p not in scripts]
    assert not missing, "add to SEGXAILIB_PYTHON_SCRIPTS in CMakeLists.txt:\n  " + "\n  ".join(missing)
    data = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "SegXAILib" / "Resources").rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts)
    missing = [p for p in data if p not in resources]
    assert not missing, "add to SEGXAILIB_RESOURCES in CMakeLists.txt:\n  " + "\n  ".join(missing)
    gone = [p for p in scripts + resources if not (ROOT / p).exists()]
    assert not gone, f"listed in CMakeLists.txt but absent: {gone}"
    assert "Resources/requirements.txt" in resources

    module_scripts = [s.replace("${MODULE_NAME}", "SegXAI") for s in _cmake_list(MODULE / "CMakeLists.txt", "MODULE_PYTHON_SCRIPTS")]
    module_resources = [s.replace("${MODULE_NAME}", "SegXAI") for s in _cmake_list(MODULE / "CMakeLists.txt", "MODULE_PYTHON_RESOURCES")]
    module_files = sorted(str(p.relative_to(MODULE)) for p in MODULE.rglob("*")
                          if p.is_file() and "__pycache__" not in p.parts and p.name != "CMakeLists.txt"
                          and "Testing" not in p.relative_to(MODULE).parts)
    assert sorted(module_scripts + module_resources) == module_files
    loose = [p.name for p in MODULE.glob("*.py") if p.name != "SegXAI.py"]
    assert not loose, f"helper .py files loose in the module folder are loaded as modules by Slicer: {loose}"
    cmake = (MODULE / "CMakeLists.txt").read_text()
    assert "WITH_GENERIC_TESTS" in cmake and "slicer_add_python_unittest" in cmake
    top = (ROOT / "CMakeLists.txt").read_text()
    assert 'EXTENSION_DEPENDS "PyTorch NNUNet"' in top and "add_subdirectory(SegXAI)" in top


def test_extension_metadata_and_requirements():
    entry = json.loads((ROOT / "ExtensionsIndex" / "SegXAI.json").read_text())
    assert {"$schema", "category", "scm_url"} <= set(entry) and entry["build_dependencies"] == ["PyTorch", "NNUNet"]
    allowed = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies", "dicom_support_rule",
               "build_subdirectory", "enabled", "tier"}
    assert set(entry) <= allowed
    assert not (ROOT / "SegXAI.s4ext").exists(), "obsolete: CMake writes the .s4ext from CMakeLists.txt; the index reads the JSON"
    requirements = [line.strip() for line in (ROOT / "Resources" / "requirements.txt").read_text().splitlines()
                    if line.strip() and not line.startswith("#")]
    names = {re.split(r"[<>=!~ ]", r)[0].lower() for r in requirements}
    assert {"numpy", "scipy", "monai", "nibabel", "pynrrd", "scikit-image", "shapiq", "matplotlib", "psutil"} <= names
    assert "torch" not in names and "shap" not in names and "slicer" not in names
    assert all(">=" in r and "==" not in r for r in requirements), "floors only, never pins"
    icon = (MODULE / "Resources" / "Icons" / "SegXAI.png").read_bytes()
    assert icon[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(icon[16:20], "big"), int.from_bytes(icon[20:24], "big")
    assert (width, height) == (128, 128)


def test_module_imports_nothing_heavy_at_import_time():
    """Loading the module in Slicer must not need torch or any package installed on first Apply."""
    tree = ast.parse(SOURCE.read_text())
    top_level = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top_level.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            top_level.add(node.module.split(".")[0] if node.level == 0 else node.module)
    assert not top_level & {"torch", "monai", "scipy", "nibabel", "nrrd", "skimage", "shapiq", "matplotlib"}, top_level
    code = ("import sys; import SegXAILib.mrml_adapter, SegXAILib.runner; "
            "heavy = [m for m in ('torch', 'monai', 'scipy', 'nibabel', 'nrrd', 'shapiq') if m in sys.modules]; print(heavy)")
    import subprocess

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------------------ headless logic
def _stub_parameter_node_wrapper(cls):
    """A stand-in for @parameterNodeWrapper: plain attributes with the declared defaults."""
    hints = typing.get_type_hints(cls, include_extras=True)

    def default(hint):
        if typing.get_origin(hint) is typing.Annotated:
            base, *extras = typing.get_args(hint)
            for extra in extras:
                if type(extra).__name__ == "Default":
                    return extra.value
            if any(type(e).__name__ == "Choice" for e in extras):
                return next(e for e in extras if type(e).__name__ == "Choice").choices[0]
            return default(base)
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            return next(iter(hint))
        return {int: 0, float: 0.0, str: "", bool: False, Path: Path("")}.get(hint)

    def __init__(self, node=None):
        self.parameterNode = node
        for name, hint in hints.items():
            setattr(self, name, default(hint))

    cls.__init__ = __init__
    return cls


@pytest.fixture
def segxai_module(monkeypatch):
    pytest.importorskip("slicer")

    class Default:
        def __init__(self, value):
            self.value = value

    class Choice:
        def __init__(self, choices):
            self.choices = choices

    class WithinRange:
        def __init__(self, lo, hi):
            self.lo, self.hi = lo, hi

    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.parameterNodeWrapper, pnw.Default, pnw.Choice, pnw.WithinRange = _stub_parameter_node_wrapper, Default, Choice, WithinRange
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text

    class _Base:
        def __init__(self, *args, **kwargs):
            pass

    class Logic(_Base):
        def getParameterNode(self):
            from slicer import vtkMRMLScriptedModuleNode

            return vtkMRMLScriptedModuleNode()

    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    slm.ScriptedLoadableModule = slm.ScriptedLoadableModuleWidget = slm.ScriptedLoadableModuleTest = _Base
    slm.ScriptedLoadableModuleLogic = Logic
    qt = types.ModuleType("qt")
    qt.QTimer = lambda: types.SimpleNamespace(setInterval=lambda ms: None, timeout=types.SimpleNamespace(connect=lambda f: None))
    for name, module in (("slicer.parameterNodeWrapper", pnw), ("slicer.i18n", i18n), ("slicer.ScriptedLoadableModule", slm), ("qt", qt)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # no __pycache__ in the module folder
    spec = importlib.util.spec_from_file_location("SegXAI_under_test", SOURCE)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "SegXAI_under_test", module)
    spec.loader.exec_module(module)
    return module


def test_module_logic_runs_the_engine_and_fills_the_scene(segxai_module, blob_case, tmp_path):
    """The panel's logic, headless: scene nodes → case files → `segxai explain` subprocess → nodes in the scene."""
    from SegXAILib import mrml_adapter as mrml
    from SegXAILib.volumes import read_volume

    m = segxai_module
    scene = mrml.new_scene(tmp_path / "cache")
    logic = m.SegXAILogic(scene=scene)
    p = logic.getParameterNode()
    assert p.method == m.Method.CONTRAST_SHAPLEY and p.device == "auto" and p.topK == 10
    assert "model" in logic.missingInputs(p)

    for c, path in enumerate(blob_case["images"]):
        array, geometry = read_volume(path)
        setattr(p, f"image{c}", mrml.add_volume(scene, array, geometry, "ABC"[c]))
    p.models = f"{blob_case['model']}\n{blob_case['model']}"
    m.SegXAILogic.applyModelDescription(p, {"format": "torchscript", "channels": ["A", "B", "C"],
                                            "labels": {"background": 0, "blob": 1}, "needs_trust": False})
    assert p.channelNames == "A,B,C" and p.target == "blob" and len(p.images()) == 3
    assert "ROI" in logic.missingInputs(p)

    # the default ROI: around the target in a reference segmentation
    truth, geometry = read_volume(blob_case["truth"])
    reference = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "truth")
    mrml._import_labels(reference, truth.astype(np.int16), geometry)
    reference.GetSegmentation().GetNthSegment(0).SetName("blob")
    p.reference = reference
    p.roi = logic.roiFromReference(p, marginMm=3.0)
    assert mrml.roi_mask(p.roi, geometry)[truth > 0].all()
    assert logic.missingInputs(p) == ""

    p.device = "cpu"
    p.outputFolder = tmp_path / "results"
    runs = logic.run(p, timeout=120)
    assert len(runs) == 1 and Path(p.lastResult).is_dir()
    run = runs[0]
    values = dict(zip(mrml.table_column(run.nodes["table"], "player"), mrml.table_column(run.nodes["table"], "value")))
    # against the reference (not the model's own prediction): A and B share v_full - v_empty, C gets nothing
    assert values["A"] == pytest.approx(values["B"], abs=1e-9) and values["C"] == pytest.approx(0.0, abs=1e-9)
    assert values["A"] + values["B"] == pytest.approx(run.result["v_full"] - run.result["v_empty"], abs=1e-9)
    assert 0.4 < values["A"] <= 0.5
    request = run.parameters()["request"]
    assert request["models"] == [blob_case["model"]] * 2 and request["roi_box"] and request["reference"]
    assert request["model_options"]["channels"] == ["A", "B", "C"]
    assert Path(request["images"][0]).parent.name.endswith("-inputs")
    assert run.nodes["chart"].GetNumberOfPlotSeriesNodes() == 3  # mean + two folds
    assert m.selftest.check_run(run, ["A", "B", "C"]) == []  # the self-test's check, on a real engine result
    m.SegXAILogic.showRun(run)  # no Plots module headless: a no-op, not an error

    # the next run gets a new folder: results are never overwritten
    assert logic.outputFolder(p) != Path(p.lastResult) and not logic.outputFolder(p).exists()
    # loading the result again adds a second run beside the first
    logic.loadResult(p.lastResult)
    assert len(mrml.find_runs(scene)) == 2


def test_module_logic_reports_engine_errors(segxai_module, blob_case, tmp_path):
    from SegXAILib import mrml_adapter as mrml
    from SegXAILib.volumes import read_volume

    m = segxai_module
    scene = mrml.new_scene(tmp_path / "cache")
    logic = m.SegXAILogic(scene=scene)
    p = logic.getParameterNode()
    array, geometry = read_volume(blob_case["images"][0])
    p.image0 = mrml.add_volume(scene, array, geometry, "A")  # one channel for a three-channel model
    p.models = blob_case["model"]
    p.target = "1"
    p.device = "cpu"
    p.outputFolder = tmp_path / "results"
    p.roi = mrml.add_roi_node(scene, *mrml.bounding_box_ras(np.ones(geometry.shape, bool), geometry, 0))
    with pytest.raises(RuntimeError, match="3 input channels") as caught:
        logic.run(p, timeout=120)
    assert "Fix: Pass one --image per model input channel" in str(caught.value)  # the engine's own fix reaches the user
    assert not mrml.find_runs(scene)


@pytest.mark.heavy
def test_module_logic_region_shap_end_to_end(segxai_module, blob_case, tmp_path):
    """Region SHAP through the panel's logic: lattice players, attribution overlay, player segments, global mask."""
    from SegXAILib import mrml_adapter as mrml
    from SegXAILib.volumes import read_volume

    m = segxai_module
    scene = mrml.new_scene(tmp_path / "cache")
    composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    logic = m.SegXAILogic(scene=scene)
    p = logic.getParameterNode()
    for c, path in enumerate(blob_case["images"]):
        array, geometry = read_volume(path)
        setattr(p, f"image{c}", mrml.add_volume(scene, array, geometry, "ABC"[c]))
    p.models = blob_case["model"]
    p.channelNames, p.target, p.device = "A,B,C", "1", "cpu"
    roi, geometry = read_volume(blob_case["roi"])
    p.roi = mrml.add_roi_node(scene, *mrml.bounding_box_ras(roi > 0, geometry, 0.5))
    p.method = m.Method.REGION_SHAP
    p.regionPlayers, p.cellMm, p.budget, p.topK = "lattice", 15.0, 48, 3
    p.outputFolder = tmp_path / "results"
    run = logic.run(p, timeout=600)[0]
    assert run.result["method"] == "region-shap" and run.result["features"]["kind"] == "lattice"
    assert {"attribution", "legend", "players", "segmentation", "table", "chart"} <= set(run.nodes)
    assert composite.GetForegroundVolumeID() == run.nodes["attribution"].GetID()
    assert composite.GetBackgroundVolumeID() == p.image0.GetID()
    segmentation = run.nodes["players"].GetSegmentation()
    assert segmentation.GetNumberOfSegments() == len(run.result["players"])
    shown = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())
             if run.nodes["players"].GetDisplayNode().GetSegmentVisibility(segmentation.GetNthSegmentID(i))]
    assert len(shown) == 3
    # every voxel of the overlay carries its player's value, as in result.json
    values, _ = mrml.array_from_volume(run.nodes["attribution"])
    ids, _ = read_volume(Path(p.lastResult) / "players.nii.gz")
    by_id = {pl["id"]: pl["value"] for pl in run.result["players"]}
    inside = ids > 0
    assert np.allclose(values[inside], np.vectorize(lambda v: by_id[v - 1])(ids[inside]), atol=1e-6)
