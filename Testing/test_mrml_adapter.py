"""The MRML adapter against a real vtkMRMLScene (slicer-core wheel): geometry round trips, ROI and segmentation
inputs, result folders turned into nodes (colour, range, table, chart, segments, subject hierarchy), runs that never
overwrite each other or the user's nodes, and a .mrb save and reload that keeps it all."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from slicer import vtkMRMLSliceCompositeNode  # noqa: E402

from SegXAILib import mrml_adapter as mrml  # noqa: E402
from SegXAILib.errors import InputError  # noqa: E402
from SegXAILib.result import write_result, write_results  # noqa: E402
from SegXAILib.volumes import Geometry, box_mask, read_volume  # noqa: E402


def _oblique(shape=(9, 8, 7)) -> Geometry:
    a, b = np.deg2rad(25), np.deg2rad(-10)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag([0.7, 1.3, 2.5])
    affine[:3, 3] = [-31.0, 14.5, 6.25]
    return Geometry(shape, affine)


def _straight(shape=(20, 16, 12)) -> Geometry:
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    affine[:3, 3] = [-15.0, -12.0, -10.0]
    return Geometry(shape, affine)


@pytest.fixture
def scene(tmp_path):
    return mrml.new_scene(tmp_path / "cache")


def test_volume_round_trip_keeps_voxels_and_oblique_geometry(scene, tmp_path):
    geo = _oblique()
    data = np.random.default_rng(1).normal(size=geo.shape).astype(np.float32)
    node = mrml.add_volume(scene, data, geo, "oblique")
    back, geo2 = mrml.array_from_volume(node)
    assert back.dtype == np.float32 and np.array_equal(back, data)
    assert np.allclose(geo2.affine, geo.affine, atol=1e-9) and geo2.shape == geo.shape
    # VTK's own IJK→RAS of one voxel agrees with ours: voxel (i, j, k) is where both say it is
    ijk_to_ras = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijk_to_ras)
    assert np.allclose(ijk_to_ras.MultiplyPoint((3, 5, 2, 1))[:3], (geo.affine @ np.array([3, 5, 2, 1.0]))[:3])
    # and the voxel value sits at that index in VTK's (k, j, i) storage
    assert node.GetImageData().GetScalarComponentAsDouble(3, 5, 2, 0) == pytest.approx(float(data[3, 5, 2]))
    # through the engine's files and back: same voxels, same place
    files = mrml.write_case_files(tmp_path / "case", [node])
    disk, disk_geo = read_volume(files.images[0])
    assert np.array_equal(disk, data) and np.allclose(disk_geo.affine, geo.affine, atol=1e-5)


def test_parent_transform_is_part_of_the_geometry(scene):
    geo = _straight((4, 5, 6))
    node = mrml.add_volume(scene, np.zeros(geo.shape, np.int16), geo, "moved")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = np.eye(4)
    shift[:3, 3] = [10, -4, 2.5]
    transform.SetMatrixTransformToParent(mrml._to_matrix(shift))
    node.SetAndObserveTransformNodeID(transform.GetID())
    assert np.allclose(mrml.volume_geometry(node).affine, shift @ geo.affine)


def test_attribution_voxel_lands_on_the_same_ras_point(scene, tmp_path):
    """An oblique, anisotropic case: a voxel marked in the engine's result file is shown where it was marked."""
    geo = _oblique((10, 9, 8))
    image = mrml.add_volume(scene, np.zeros(geo.shape, np.float32), geo, "T1")
    attribution = np.zeros(geo.shape, np.float32)
    attribution[7, 2, 5] = 0.8
    attribution[1, 6, 3] = -0.3
    out = write_result(tmp_path / "res", {"method": "region-shap", "value_function": "dice", "target_label": "1",
                                          "players": [], "ranking": []}, maps={"attribution": (attribution, geo)})
    run = mrml.load_result(scene, out, background=image)
    node = run.nodes["attribution"]
    values, where = mrml.array_from_volume(node)
    hot = np.argwhere(values == values.max())[0]
    ras_shown = (where.affine @ np.array([*hot, 1.0]))[:3]
    ras_marked = (geo.affine @ np.array([7, 2, 5, 1.0]))[:3]
    assert np.allclose(ras_shown, ras_marked, atol=1e-4)


def test_case_from_volumes_checks_grids(scene):
    a = mrml.add_volume(scene, np.ones((4, 5, 6), np.float32), _straight((4, 5, 6)), "a")
    b = mrml.add_volume(scene, np.ones((4, 5, 6), np.float32), _oblique((4, 5, 6)), "b")
    case = mrml.case_from_volumes([a, a], ["T1", "T2"])
    assert case.images.shape == (2, 4, 5, 6) and case.channel_names == ["T1", "T2"]
    with pytest.raises(InputError, match="not on the grid"):
        mrml.case_from_volumes([a, b])
    assert mrml.case_from_volumes([a, b], resample=True).images.shape == (2, 4, 5, 6)


def test_axis_aligned_roi_node_matches_box_mask(scene):
    geo = _straight()
    roi = mrml.add_roi_node(scene, [-10, -5, -6], [2, 4, 8])
    mask = mrml.roi_mask(roi, geo)
    assert np.array_equal(mask, box_mask(geo, [-10, -5, -6], [2, 4, 8]))
    assert mrml.roi_box(roi) == pytest.approx([-10, -5, -6, 2, 4, 8])
    roi.SetInsideOut(True)
    assert np.array_equal(mrml.roi_mask(roi, geo), ~mask) and mrml.roi_box(roi) is None


def rotated_roi(scene, size, centre, degrees_about_s):
    """A markups ROI of `size` mm turned about the S axis by its own object-to-node matrix, centred at `centre` (RAS)."""
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    roi.SetSize(*size)
    transform = vtk.vtkTransform()
    transform.Translate(*centre)
    transform.RotateZ(degrees_about_s)
    roi.SetAndObserveObjectToNodeMatrix(transform.GetMatrix())
    return roi


def test_rotated_roi_node_selects_the_rotated_box(scene):
    geo = Geometry((40, 40, 5), np.diag([1.0, 1.0, 1.0, 1.0]))
    roi = rotated_roi(scene, (20, 4, 10), (20, 20, 2), 45)
    mask = mrml.roi_mask(roi, geo)
    assert mrml.roi_box(roi) is None
    assert mask[20, 20, 2] and mask[25, 25, 2] and mask[15, 15, 2]  # along the rotated long axis
    assert not mask[27, 20, 2] and not mask[20, 27, 2]               # along RAS axes: outside the thin box
    # the same box via a parent transform instead of the ROI's own orientation
    roi2 = mrml.add_roi_node(scene, [-10, -2, -5], [10, 2, 5])
    parent = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    parent.SetMatrixTransformToParent(roi.GetObjectToNodeMatrix())
    roi2.SetAndObserveTransformNodeID(parent.GetID())
    assert np.array_equal(mrml.roi_mask(roi2, geo), mask)


def test_roi_outside_the_image_or_unplaced_is_an_input_error(scene):
    geo = _straight()
    with pytest.raises(InputError, match="outside"):
        mrml.roi_mask(mrml.add_roi_node(scene, [500, 500, 500], [510, 510, 510]), geo)
    with pytest.raises(InputError, match="not been placed"):
        mrml.roi_mask(scene.AddNewNodeByClass("vtkMRMLMarkupsROINode"), geo)


def test_labelmap_and_segmentation_become_labels_on_the_image_grid(scene):
    geo = _oblique((12, 10, 8))
    labels = np.zeros(geo.shape, np.int16)
    labels[2:5, 2:6, 1:4] = 1
    labels[7:10, 5:8, 4:7] = 3
    labelmap = mrml.add_volume(scene, labels, geo, "labels", label=True)
    assert np.array_equal(mrml.labels_from_node(labelmap, geo), labels)

    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    segmentation.CreateDefaultDisplayNodes()
    ids = mrml._import_labels(segmentation, labels, geo)
    segmentation.GetSegmentation().GetSegment(ids[1]).SetName("necrosis")
    segmentation.GetSegmentation().GetSegment(ids[3]).SetName("Enhancing")
    # by order, as Slicer exports: 1, 2
    by_order = mrml.labels_from_node(segmentation, geo)
    assert np.array_equal(by_order, np.where(labels == 3, 2, labels))
    # by name, from the model's labels (case-insensitive)
    by_name = mrml.labels_from_node(segmentation, geo, {"necrosis": 1, "enhancing": 4})
    assert np.array_equal(by_name, np.where(labels == 3, 4, labels))
    # a labelmap on another grid is resampled (nearest neighbour) onto the image grid
    fine = Geometry((24, 20, 16), geo.affine @ np.diag([0.5, 0.5, 0.5, 1.0]))
    on_fine = mrml.labels_from_node(labelmap, fine)
    assert set(np.unique(on_fine)) == {0, 1, 3} and on_fine.shape == fine.shape


def test_reference_default_roi_from_target_bounding_box(scene):
    geo = _straight()
    labels = np.zeros(geo.shape, np.int32)
    labels[5:9, 4:7, 3:5] = 2
    low, high = mrml.bounding_box_ras(labels == 2, geo, margin_mm=3)
    roi = mrml.add_roi_node(scene, low, high)
    mask = mrml.roi_mask(roi, geo)
    assert mask[labels == 2].all() and mask.sum() > (labels == 2).sum()
    with pytest.raises(InputError):
        mrml.bounding_box_ras(labels == 7, geo)


def test_write_case_files_for_the_engine(scene, tmp_path):
    geo = _straight()
    rng = np.random.default_rng(3)
    vols = [mrml.add_volume(scene, rng.normal(size=geo.shape).astype(np.float32), geo, n) for n in ("T1", "FLAIR")]
    roi = mrml.add_roi_node(scene, [-10, -5, -6], [2, 4, 8])
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "ref")
    labels = np.zeros(geo.shape, np.int16)
    labels[6:9, 5:8, 3:6] = 1
    mrml._import_labels(seg, labels, geo)
    files = mrml.write_case_files(tmp_path / "in", vols, roi, seg)
    assert len(files.images) == 2 and files.roi_mask is None and files.roi_box == pytest.approx([-10, -5, -6, 2, 4, 8])
    ref, ref_geo = read_volume(files.reference)
    assert np.array_equal(ref, labels) and not geo.differences(ref_geo)
    assert files.channel_names == ["T1", "FLAIR"]
    # a rotated ROI travels as a mask file
    transform = vtk.vtkTransform()
    transform.RotateZ(30)
    roi.SetAndObserveObjectToNodeMatrix(transform.GetMatrix())
    roi.SetCenter(-4, 0, 1)
    files = mrml.write_case_files(tmp_path / "in2", vols, roi)
    assert files.roi_box is None
    disk, _ = read_volume(files.roi_mask)
    assert np.array_equal(disk != 0, mrml.roi_mask(roi, geo))
    assert set(files.request_fields()) == {"images", "roi_mask", "roi_box", "reference"}


def _region_result(tmp_path, geo, name="res", folds=3):
    """A region-SHAP-like result folder (the engine's conventions: player ids from 0, the players map holds id + 1):
    5 region players, attribution, players, global mask, ROI."""
    rng = np.random.default_rng(7)
    players_map = np.zeros(geo.shape, np.int32)
    players_map[0:5], players_map[5:10], players_map[10:14], players_map[14:17], players_map[17:20] = 1, 2, 3, 4, 5
    values = {0: 0.40, 1: -0.25, 2: 0.05, 3: 0.0, 4: 0.12}  # by player id
    attribution = np.vectorize(lambda v: values.get(v - 1, 0.0))(players_map).astype(np.float32)
    per_model = {p: list(v + rng.normal(scale=0.02, size=folds)) for p, v in values.items()}
    players = [{"id": p, "name": f"region {p + 1}", "value": float(np.mean(per_model[p])), "per_model": per_model[p],
                "std": float(np.std(per_model[p], ddof=1)), "std_error": 0.01, "volume_ml": 1.5} for p in values]
    ranking = [p["name"] for p in sorted(players, key=lambda p: -p["value"])]
    result = {"method": "region-shap", "value_function": "soft-dice", "target_label": "ET", "players": players,
              "ranking": ranking, "v_empty": 0.1, "v_full": 0.9,
              "per_model": [{"model": f"fold{i}.pt"} for i in range(folds)],
              "request": {"images": ["a.nii.gz"], "models": [f"fold{i}.pt" for i in range(folds)], "seed": 11, "budget": 512},
              "provenance": {"created": "2026-11-22T10:15:30+00:00", "seed": 11}}
    roi = np.zeros(geo.shape, np.uint8)
    roi[2:18, 2:14, 2:10] = 1
    maps = {"attribution": (attribution, geo), "players": (players_map, geo), "mask": ((players_map == 1).astype(np.uint8), geo),
            "roi": (roi, geo), "prediction": ((attribution > 0.1).astype(np.float32), geo)}
    return write_result(tmp_path / name, result, maps=maps), result


def test_result_folder_becomes_nodes_under_one_folder(scene, tmp_path):
    geo = _straight()
    background = mrml.add_volume(scene, np.zeros(geo.shape, np.float32), geo, "T1c")
    composite = scene.AddNode(vtkMRMLSliceCompositeNode())
    out, result = _region_result(tmp_path, geo)
    run = mrml.load_result(scene, out, background=background, top_k=2)

    assert {"parameters", "table", "chart", "attribution", "legend", "players", "segmentation"} <= set(run.nodes)
    sh = scene.GetSubjectHierarchyNode()
    assert "region-shap" in run.name and "ET" in run.name and "2026-11-22" in run.name
    for role, node in run.nodes.items():
        assert node.GetAttribute(mrml.ATTR_RUN) == run.run_id and node.GetAttribute(mrml.ATTR_ROLE) == role
        if role == "legend":  # display nodes are not subject-hierarchy items; their volume is
            assert not sh.GetItemByDataNode(node)
        else:
            assert sh.GetItemParent(sh.GetItemByDataNode(node)) == run.folder_item, role

    # attribution: diverging colours, symmetric fixed range, near-zero transparent, legend, foreground at 0.4
    display = run.nodes["attribution"].GetDisplayNode()
    color = display.GetColorNode()
    assert color.GetAttribute(mrml.ATTR_ROLE) == "colormap" and color.GetNumberOfColors() == 256
    rgba_low, rgba_mid, rgba_high = [0.0] * 4, [0.0] * 4, [0.0] * 4
    color.GetColor(0, rgba_low), color.GetColor(128, rgba_mid), color.GetColor(255, rgba_high)
    assert rgba_low[2] > rgba_low[0] and rgba_high[0] > rgba_high[2] and rgba_mid[3] == 0.0  # blue … clear … red
    assert not display.GetAutoWindowLevel()
    assert display.GetWindowLevelMin() == pytest.approx(-0.40, abs=1e-6) and display.GetWindowLevelMax() == pytest.approx(0.40, abs=1e-6)
    assert display.GetLevel() == pytest.approx(0.0, abs=1e-9)
    legend = run.nodes["legend"]
    assert legend.GetClassName() == "vtkMRMLColorLegendDisplayNode" and legend.GetPrimaryDisplayNode() is display
    assert composite.GetForegroundVolumeID() == run.nodes["attribution"].GetID()
    assert composite.GetBackgroundVolumeID() == background.GetID() and composite.GetForegroundOpacity() == pytest.approx(0.4)

    # table: one row per player in ranking order, values and fold columns as in result.json
    table = run.nodes["table"]
    assert mrml.table_column(table, "player") == result["ranking"]
    players = {p["name"]: p for p in result["players"]}
    assert mrml.table_column(table, "value") == pytest.approx([players[n]["value"] for n in result["ranking"]])
    assert mrml.table_column(table, "std") == pytest.approx([players[n]["std"] for n in result["ranking"]])
    for i in range(3):
        assert mrml.table_column(table, f"fold {i}") == pytest.approx([players[n]["per_model"][i] for n in result["ranking"]])
    upper = mrml.table_column(table, "value + std")
    assert upper == pytest.approx([players[n]["value"] + players[n]["std"] for n in result["ranking"]])
    assert mrml.table_column(table, "std_error") == pytest.approx([0.01] * 5)
    with pytest.raises(KeyError):  # not reported by this method: no column rather than an invented one
        mrml.table_column(table, "mean_rank")

    # chart: bar series of the mean and one per fold, all reading the table, then the error interval as markers
    chart = run.nodes["chart"]
    assert chart.GetNumberOfPlotSeriesNodes() == 6
    assert [chart.GetNthPlotSeriesNode(i).GetYColumnName() for i in (4, 5)] == ["value - error", "value + error"]
    assert mrml.table_column(table, "result")[0] == f"{players[result['ranking'][0]]['value']:.4g} ± 0.01"
    ys = [chart.GetNthPlotSeriesNode(i).GetYColumnName() for i in range(4)]
    assert ys == ["value", "fold 0", "fold 1", "fold 2"]
    for i in range(4):
        series = chart.GetNthPlotSeriesNode(i)
        assert series.GetPlotType() == series.PlotTypeBar and series.GetTableNode() is table

    # players: one segment per region, named by rank; only the top 2 by |value| shown
    segmentation = run.nodes["players"].GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 5
    shown = {}
    for i in range(5):
        sid = segmentation.GetNthSegmentID(i)
        shown[segmentation.GetSegment(sid).GetName()] = run.nodes["players"].GetDisplayNode().GetSegmentVisibility(sid)
    visible = sorted(n for n, v in shown.items() if v)
    assert len(visible) == 2 and visible[0].startswith("#1 region 1") and visible[1].startswith("#2 region 2")
    # global mask, ROI and prediction: segments of one 'regions' node
    regions = run.nodes["segmentation"].GetSegmentation()
    names = {regions.GetNthSegment(i).GetName() for i in range(regions.GetNumberOfSegments())}
    assert names == {"ROI", "prediction", "relevant regions"}
    mask_labels = mrml.labels_from_node(run.nodes["segmentation"], geo, {"relevant regions": 9, "ROI": 0, "prediction": 0})
    assert np.array_equal(mask_labels == 9, read_volume(out / "mask.nii.gz")[0] != 0)

    # the run's parameters travel with it
    assert run.parameters()["request"]["seed"] == 11 and run.parameters()["ranking"] == result["ranking"]


def test_signed_and_one_signed_thresholds(scene, tmp_path):
    geo = _straight((6, 6, 6))
    positive = np.zeros(geo.shape, np.float32)
    positive[1, 1, 1] = 2.0
    out = write_result(tmp_path / "pos", {"method": "m", "target_label": "1", "players": []}, maps={"attribution": (positive, geo)})
    display = mrml.load_result(scene, out).nodes["attribution"].GetDisplayNode()
    assert display.GetApplyThreshold() and 0 < display.GetLowerThreshold() < 0.1 and display.GetUpperThreshold() == pytest.approx(2.0)
    assert display.GetWindowLevelMin() == pytest.approx(-2.0) and display.GetWindowLevelMax() == pytest.approx(2.0)


def test_second_load_never_overwrites_the_first_or_user_nodes(scene, tmp_path):
    geo = _straight()
    out, _ = _region_result(tmp_path, geo)
    user_table = scene.AddNewNodeByClass("vtkMRMLTableNode", "SegXAI region-shap ET ranking")
    user_volume = mrml.add_volume(scene, np.full(geo.shape, 5, np.float32), geo, "SegXAI region-shap ET attribution")
    first = mrml.load_result(scene, out)
    second = mrml.load_result(scene, out)
    assert first.run_id != second.run_id and first.folder_item != second.folder_item
    sh = scene.GetSubjectHierarchyNode()
    assert sh.GetItemName(first.folder_item) != sh.GetItemName(second.folder_item)
    for role in first.nodes:
        assert first.nodes[role] is not second.nodes[role]
        assert first.nodes[role].GetName() != second.nodes[role].GetName()
    assert user_table.GetName() == "SegXAI region-shap ET ranking" and user_table.GetTable().GetNumberOfColumns() == 0
    assert user_volume.GetName() == "SegXAI region-shap ET attribution"
    assert np.all(mrml.array_from_volume(user_volume)[0] == 5)
    assert user_table.GetAttribute(mrml.ATTR_RUN) is None
    assert len(mrml.find_runs(scene)) == 2
    # one colour table for the scene, shared by both runs
    assert first.nodes["attribution"].GetDisplayNode().GetColorNodeID() == second.nodes["attribution"].GetDisplayNode().GetColorNodeID()


def test_several_targets_share_one_run_folder(scene, tmp_path):
    geo = _straight()
    base = {"method": "contrast-shapley", "value_function": "dice", "provenance": {"created": "2026-11-22T10:00:00+00:00"}}
    docs = {}
    for target, values in (("WT", [0.5, 0.3]), ("ET", [0.1, 0.7])):
        players = [{"id": c, "name": n, "value": v, "per_model": [v]} for c, (n, v) in enumerate(zip(["T1c", "FLAIR"], values))]
        ranking = [p["name"] for p in sorted(players, key=lambda p: -p["value"])]
        docs[target] = ({**base, "target_label": target, "players": players, "ranking": ranking},
                        {"roi": (np.ones(geo.shape, np.uint8), geo)})
    out = write_results(tmp_path / "multi", docs)
    runs = mrml.load_results(scene, out)
    assert [r.result["target_label"] for r in runs] == ["WT", "ET"]
    sh = scene.GetSubjectHierarchyNode()
    parents = {sh.GetItemParent(r.folder_item) for r in runs}
    assert len(parents) == 1 and parents != {sh.GetSceneItemID()}
    assert mrml.table_column(runs[1].nodes["table"], "player") == ["FLAIR", "T1c"]
    assert runs[0].nodes["chart"].GetNumberOfPlotSeriesNodes() == 1  # one model: no per-fold series
    with pytest.raises(InputError):
        mrml.load_results(scene, tmp_path)


def test_mrb_round_trip_keeps_nodes_hierarchy_and_parameters(scene, tmp_path):
    geo = _oblique((12, 10, 8))
    image = mrml.add_volume(scene, np.random.default_rng(0).normal(size=geo.shape).astype(np.float32), geo, "T1")
    out, result = _region_result(tmp_path, Geometry((20, 16, 12), geo.affine))
    run = mrml.load_result(scene, out, background=None)
    attribution_before = mrml.array_from_volume(run.nodes["attribution"])
    bundle = mrml.save_mrb(scene, tmp_path / "scene.mrb")

    reloaded = mrml.load_mrb(mrml.new_scene(tmp_path / "cache2"), bundle)
    runs = mrml.find_runs(reloaded)
    assert list(runs) == [run.run_id]
    nodes = runs[run.run_id]
    assert {"parameters", "table", "chart", "attribution", "players", "segmentation"} <= set(nodes)
    # parameters and result
    params = json.loads(nodes["parameters"].GetText())
    assert params["request"] == result["request"] and params["provenance"] == result["provenance"]
    # the table and its values
    assert mrml.table_column(nodes["table"], "player") == result["ranking"]
    # (the table file keeps 6 significant digits; the parameters node keeps result.json exactly)
    assert mrml.table_column(nodes["table"], "value") == pytest.approx(mrml.table_column(run.nodes["table"], "value"), rel=1e-5)
    assert nodes["chart"].GetNumberOfPlotSeriesNodes() == 6  # mean, three folds, the error interval
    # the attribution volume: voxels, geometry and display
    values, where = mrml.array_from_volume(nodes["attribution"])
    assert np.allclose(values, attribution_before[0]) and np.allclose(where.affine, attribution_before[1].affine, atol=1e-5)
    display = nodes["attribution"].GetDisplayNode()
    assert display.GetColorNode().GetAttribute(mrml.ATTR_ROLE) == "colormap"
    assert display.GetWindowLevelMin() == pytest.approx(-0.40, abs=1e-5) and not display.GetAutoWindowLevel()
    # segments and the subject-hierarchy folder
    assert nodes["players"].GetSegmentation().GetNumberOfSegments() == 5
    sh = reloaded.GetSubjectHierarchyNode()
    folder = sh.GetItemParent(sh.GetItemByDataNode(nodes["table"]))
    assert sh.GetItemName(folder) == run.name and sh.GetItemAttribute(folder, mrml.ATTR_RUN) == run.run_id
    assert reloaded.GetFirstNodeByName("T1") is not None and image.GetName() == "T1"


# ------------------------------------------------------------------------------------------------ issue 13
def test_result_volumes_load_with_slicers_own_readers(tmp_path):
    """A fresh Slicer has no nibabel or pynrrd: loading a result folder must not import them."""
    import subprocess
    import sys

    out, result = _region_result(tmp_path, _straight())
    code = ("import sys\n"
            "for name in ('nibabel', 'nrrd'): sys.modules[name] = None  # as absent as in a fresh Slicer\n"
            "import numpy as np\n"
            "from SegXAILib import mrml_adapter as mrml\n"
            f"scene = mrml.new_scene({str(tmp_path / 'cache')!r})\n"
            f"run = mrml.load_result(scene, {str(out)!r})\n"
            "values, geo = mrml.array_from_volume(run.nodes['attribution'])\n"
            "print(repr(float(values[1, 0, 0])), repr(float(values[6, 0, 0])), geo.affine[0, 0], geo.affine[0, 3],\n"
            "      run.nodes['players'].GetSegmentation().GetNumberOfSegments())\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    first, second, spacing, origin, segments = done.stdout.split()
    assert float(first) == pytest.approx(0.40) and float(second) == pytest.approx(-0.25)  # players 0 and 1, as written
    assert float(spacing) == pytest.approx(1.5) and float(origin) == pytest.approx(-15.0)
    assert int(segments) == len(result["players"])


def test_rotated_roi_memory_follows_the_roi_not_the_image(scene):
    """A small rotated ROI in a big image: no full-grid index array in Slicer's process (~2.5 GB for a CT)."""
    import tracemalloc

    geo = Geometry((256, 256, 120), np.diag([0.8, 0.8, 1.5, 1.0]))
    roi = rotated_roi(scene, (30, 10, 12), (100, 100, 90), 30)
    tracemalloc.start()
    mask = mrml.roi_mask(roi, geo)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 3 * mask.nbytes  # the mask itself (7.9 MB) plus small change; the full grid needed ~470 MB
    # the same voxels as testing every voxel centre of the image
    ijk = np.argwhere(mask)
    ras = ijk @ geo.affine[:3, :3].T + geo.affine[:3, 3]
    local = (np.linalg.inv(mrml._vtk._to_array(roi.GetObjectToWorldMatrix())) @ np.c_[ras, np.ones(len(ras))].T)[:3]
    assert np.all(np.abs(local) <= np.array([15, 5, 6])[:, None] + 1e-6)
    expected = 30 * 10 * 12 / (0.8 * 0.8 * 1.5)
    assert abs(len(ijk) - expected) < 0.2 * expected  # voxel centres at the thin box's faces


def test_reading_a_segmentation_adds_no_representation_to_it(scene):
    """A closed-surface reference is read through a copy: the user's segmentation keeps exactly what it had."""
    geo = _straight((20, 20, 20))
    geo = Geometry(geo.shape, np.diag([1.0, 1.0, 1.0, 1.0]))
    sphere = vtk.vtkSphereSource()
    sphere.SetCenter(10, 10, 10)
    sphere.SetRadius(5)
    sphere.SetThetaResolution(32)
    sphere.SetPhiResolution(32)
    sphere.Update()
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "surface reference")
    seg.GetSegmentation().SetSourceRepresentationName("Closed surface")  # as a model imported as a segmentation
    seg.AddSegmentFromClosedSurfaceRepresentation(sphere.GetOutput(), "tumour", [1.0, 0.0, 0.0])
    segmentation = seg.GetSegmentation()
    assert not segmentation.ContainsRepresentation("Binary labelmap")
    labels = mrml.labels_from_node(seg, geo, {"tumour": 2})
    assert not segmentation.ContainsRepresentation("Binary labelmap")  # nothing added to the user's node
    assert set(np.unique(labels)) == {0, 2}
    assert labels[10, 10, 10] == 2 and labels[0, 0, 0] == 0
    assert abs((labels == 2).sum() - 4 / 3 * np.pi * 5 ** 3) < 0.25 * 4 / 3 * np.pi * 5 ** 3


def test_case_inputs_are_written_uncompressed(scene, tmp_path):
    """Inputs are written on Slicer's GUI thread: raw NRRD, not gzip (seconds per CT at level 9)."""
    geo = _straight()
    node = mrml.add_volume(scene, np.random.default_rng(0).normal(size=geo.shape).astype(np.float32), geo, "CT")
    files = mrml.write_case_files(tmp_path / "in", [node], mrml.add_roi_node(scene, [-10, -5, -6], [2, 4, 8]))
    header = open(files.images[0], "rb").read(1000).split(b"\n\n")[0].decode()
    assert "encoding: raw" in header
    assert np.array_equal(read_volume(files.images[0])[0], mrml.array_from_volume(node)[0])


def test_partial_results_refresh_the_same_nodes_in_place(scene, tmp_path):
    """Anytime results: each partial folder and then the final one update one run's nodes; no node is added."""
    geo = _straight()
    first, result = _region_result(tmp_path, geo, "partial")
    run = mrml.load_result(scene, first)
    ids = {role: node.GetID() for role, node in run.nodes.items()}
    count = scene.GetNumberOfNodes()
    final_result = json.loads(json.dumps(result))
    for player in final_result["players"]:
        player["value"] = player["value"] * 2
        player["std_error"] = None
    attribution = np.full(geo.shape, 0.7, np.float32)
    final = write_result(tmp_path / "final", final_result, maps={"attribution": (attribution, geo)})
    mrml.refresh_result(run, final)
    assert {role: node.GetID() for role, node in run.nodes.items() if role in ids} == \
        {role: i for role, i in ids.items() if not role.startswith("series") or role in ("series0", "series1", "series2", "series3")}
    assert scene.GetNumberOfNodes() <= count  # the two error series went with the error; nothing new
    assert np.allclose(mrml.array_from_volume(run.nodes["attribution"])[0], 0.7)
    values = dict(zip(mrml.table_column(run.nodes["table"], "player"), mrml.table_column(run.nodes["table"], "value")))
    assert values == pytest.approx({p["name"]: p["value"] for p in final_result["players"]})
    assert run.nodes["attribution"].GetAttribute(mrml.ATTR_RESULT_DIR) == str(final.resolve())
    assert json.loads(run.nodes["parameters"].GetText())["players"][0]["value"] == final_result["players"][0]["value"]


def test_no_error_bar_when_std_error_is_null(scene, tmp_path):
    geo = _straight()
    out, result = _region_result(tmp_path, geo)
    doc = json.loads((out / "result.json").read_text())
    for player in doc["players"]:
        player["std_error"] = None
    (out / "result.json").write_text(json.dumps(doc))
    run = mrml.load_result(scene, out)
    table = run.nodes["table"]
    names = [table.GetTable().GetColumnName(i) for i in range(table.GetTable().GetNumberOfColumns())]
    assert not any("error" in n or "±" in n for n in names), names
    assert not any("±" in cell for cell in mrml.table_column(table, "result"))
    chart = run.nodes["chart"]
    assert all("error" not in chart.GetNthPlotSeriesNode(i).GetYColumnName() for i in range(chart.GetNumberOfPlotSeriesNodes()))
