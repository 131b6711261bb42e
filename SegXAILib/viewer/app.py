"""The trame-slicer application behind `segxai view`.

The scene is trame-slicer's own `SlicerApp` scene; the case and the result reach it through the same public
`SegXAILib.mrml_adapter` functions the Slicer module uses, so the overlay, the region segmentation, the colour table
and its fixed symmetric range are exactly the panel's. The chart and the table are the HTML report's. The server
listens on 127.0.0.1 unless told otherwise, and `exit_after` stops it by itself.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..mrml_adapter import add_volume, load_results, show_in_slice_views
from ..colormap import FOREGROUND_OPACITY
from ..report.charts import ranking_chart
from ..report.page import player_rows, result_folders
from ..report.slices import region_centre
from ..result import read_result
from ..volumes import read_volume

LAYOUT = "Quad View"


def demo_result_folders(demo_dir: str | Path) -> list[Path]:
    """Every run a `segxai demo` folder holds, in the demo's order."""
    from ..demo.run_demo import RUN_LABELS

    demo_dir = Path(demo_dir)
    folders = [f for name in RUN_LABELS if (demo_dir / name).is_dir() for f in result_folders(demo_dir / name)]
    if not folders:
        raise InputError(f"{demo_dir} holds no demo results.", f"Run `segxai demo --out {demo_dir}` first, or pass --demo DIR.")
    return folders


class ResultViewer:
    """One trame server showing result folders; `select(n)` loads the n-th, `jump(name)` centres the views on a region."""

    def __init__(self, server, folders: list[Path]):
        from trame_slicer import module as trame_slicer_module
        from trame_slicer.core import LayoutManager, SlicerApp
        from trame_slicer.rca_view import register_rca_factories

        self.server, self.folders = server, [Path(f) for f in folders]
        server.enable_module(trame_slicer_module)
        self.app = SlicerApp()
        register_rca_factories(self.app.view_manager, server, rca_encoder="png")  # lossless: the colours are the panel's
        self.layout_manager = LayoutManager(self.app.scene, self.app.view_manager, server)
        self.layout_manager.register_layout_dict(LayoutManager.default_grid_configuration())
        self.layout_manager.set_layout(LAYOUT)
        self.runs, self.players, self.geometry, self._nodes = [], None, None, []
        state = server.state
        state.trame__title = "SegXAI viewer"
        state.runs = [{"title": self._label(f), "value": n} for n, f in enumerate(self.folders)]
        state.run_index, state.opacity, state.rows, state.chart, state.jumped, state.loaded = 0, FOREGROUND_OPACITY, [], "", "", False
        state.change("run_index")(lambda run_index, **_: self.select(int(run_index)))
        state.change("opacity")(lambda opacity, **_: self.set_opacity(float(opacity)))
        server.controller.jump = self.jump
        self._build_ui()

    def _label(self, folder: Path) -> str:
        result = read_result(folder)
        return f"{result.get('method', '')} · {result.get('target_label', '')} · {folder.parent.name}/{folder.name}"

    def _build_ui(self) -> None:
        from trame.ui.vuetify3 import SinglePageWithDrawerLayout
        from trame.widgets import html
        from trame.widgets import vuetify3 as v

        with SinglePageWithDrawerLayout(self.server, full_height=True) as layout:
            layout.title.set_text("SegXAI viewer")
            layout.drawer.width = 420
            with layout.drawer:
                with v.VContainer():
                    v.VSelect(label="result", items=("runs",), v_model=("run_index",), density="compact", id="run-select")
                    v.VSlider(label="overlay opacity", v_model=("opacity",), min=0, max=1, step=0.05, thumb_label=True,
                              density="compact", id="opacity")
                    html.Img(src=("chart",), style="max-width: 100%", v_if=("chart",), id="chart")
                    html.Div("{{ jumped }}", id="jumped", classes="text-caption")
                    with v.VTable(density="compact", id="players", hover=True):
                        with html.Thead():
                            with html.Tr():
                                for head in ("rank", "region", "value", "±", "ml"):
                                    html.Th(head)
                        with html.Tbody():
                            with html.Tr(v_for="row in rows", key="row.name", classes="player", style="cursor: pointer",
                                         click=(self.jump, "[row.name]"), __properties=[("data_player", "data-player")],
                                         data_player=("row.name",)):
                                html.Td("{{ row.rank }}")
                                html.Td("{{ row.name }}")
                                html.Td("{{ row.value.toPrecision(3) }}")
                                html.Td("{{ row.pm }}")
                                html.Td("{{ row.volume_ml === null ? '' : row.volume_ml.toFixed(1) }}")
            with layout.content:
                self.layout_manager.initialize_layout_grid(layout)
        self.ui = layout

    # ---------------------------------------------------------------------------------------------------------
    def select(self, index: int) -> None:
        """Clears the scene and loads result `index` with its case, as the Slicer module loads a result."""
        folder = self.folders[index]
        result = read_result(folder)
        scene = self.app.scene
        for node in self._nodes:
            if scene.IsNodePresent(node):
                scene.RemoveNode(node)
        before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
        background = self._background(result)
        self.runs = load_results(scene, folder, background=background, show=True)
        for run in self.runs:  # the 3D view shows the regions as surfaces
            if "players" in run.nodes:
                run.nodes["players"].CreateClosedSurfaceRepresentation()
        self._nodes = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes()) if scene.GetNthNode(i).GetID() not in before]
        if background is not None:
            show_in_slice_views(scene, background=background, foreground=self.runs[0].nodes.get("attribution"), opacity=self.server.state.opacity)
        self.players, self.geometry = (read_volume(folder / result["maps"]["players"]) if "players" in (result.get("maps") or {})
                                       else (None, None))
        rows = player_rows(result)
        state = self.server.state
        state.rows = [{k: row[k] for k in ("rank", "name", "value", "pm", "volume_ml")} for row in rows]
        state.chart = ranking_chart(rows, f"{result.get('method', '')}: {result.get('target_label', '')}",
                                    f"{result.get('method', '')} ({result.get('value_function', '')})") if rows else ""
        state.jumped = ""
        self.app.display_manager.reset_views()
        for view in self.app.view_manager.get_views():
            view.schedule_render()
        state.loaded = True

    def _background(self, result: dict):
        images = (result.get("request") or {}).get("images") or []
        if not images or not Path(images[0]).exists():
            return None
        array, geometry = read_volume(images[0])
        channels = (result.get("provenance") or {}).get("channel_names") or [Path(images[0]).name]
        return add_volume(self.app.scene, array[..., 0] if array.ndim == 4 else array, geometry, str(channels[0]))

    def set_opacity(self, opacity: float) -> None:
        """The attribution layer's opacity; the segmentations (regions, ROI, mask) fade with it below the default."""
        show_in_slice_views(self.app.scene, opacity=opacity, foreground=(self.runs[0].nodes.get("attribution") if self.runs else None))
        for run in self.runs:
            for role in ("players", "segmentation"):
                if role in run.nodes:
                    run.nodes[role].GetDisplayNode().SetOpacity(min(1.0, opacity / FOREGROUND_OPACITY))
        for view in self.app.view_manager.get_views():
            view.schedule_render()

    def jump(self, name: str) -> None:
        """Centres every slice view on the region's inner centre voxel (table row click)."""
        result = self.runs[0].result if self.runs else {}
        player = next((p for p in result.get("players") or [] if p["name"] == name), None)
        if player is None or self.players is None:
            self.server.state.jumped = f"{name}: no region map to jump to"
            return
        mask = self.players == int(player["id"]) + 1
        if not mask.any():
            self.server.state.jumped = f"{name}: empty region"
            return
        ras = (self.geometry.affine @ np.append(region_centre(mask), 1.0))[:3]
        scene = self.app.scene
        nodes = scene.GetNodesByClass("vtkMRMLSliceNode")
        for i in range(nodes.GetNumberOfItems()):
            nodes.GetItemAsObject(i).JumpSliceByCentering(*map(float, ras))
        for view in self.app.view_manager.get_views():
            view.schedule_render()
        self.server.state.jumped = f"{name} at RAS {ras[0]:.1f}, {ras[1]:.1f}, {ras[2]:.1f}"


def view_result_folders(path: str | Path, demo: bool = False, host: str = "127.0.0.1", port: int = 8080,
                        exit_after: float | None = None) -> None:
    """Serves the result folder(s) at http://HOST:PORT/ and prints that URL; blocks until stopped or `exit_after`."""
    from trame.app import get_server

    folders = demo_result_folders(path) if demo else result_folders(path)
    server = get_server("segxai-view", client_type="vue3")
    os.environ.setdefault("TRAME_ARGS", "")   # our command line owns sys.argv; trame must not read it too
    viewer = ResultViewer(server, folders)

    @server.controller.add("on_server_ready")
    def ready(**_):
        viewer.select(0)
        # sessionURL names the websocket, so the page never probes for a session launcher (a failing POST)
        print(f"SegXAI viewer: http://{host}:{server.port}/?sessionURL=ws://{host}:{server.port}/ws", flush=True)
        if exit_after:
            asyncio.get_event_loop().call_later(exit_after, lambda: asyncio.ensure_future(server.stop()))

    server.start(host=host, port=port, open_browser=False, show_connection_info=False, timeout=0)
