"""ROI-restricted sliding-window evaluation of coalitions, batched and cached.

For a voxel v the fused output is Σ_t w_t(v) z_t(v) / Σ_t w_t(v) over the windows t that cover v. Only windows
that overlap the ROI contribute to ROI voxels, so only those are run, on the full-volume grid with the
full-volume weights: inside the ROI the result equals full-volume inference. A window whose input holds no
removed player is unchanged from the full coalition, so its cached logits are reused (the fusion is linear in
the window logits): fused(S) = fused(full) + Σ_{t changed by S} w_t (z_t(S) − z_t(full)) / Σ_t w_t.
More generally a window's logits depend only on which of the players inside it a coalition keeps, so changed
windows are memoised under that pattern and shared by every coalition that repeats it (for contrasts, whose
players span every window, this adds nothing; for regions it is most of the saving).
(coalition, window) pairs that do need the network run in batches sized to the memory there is.

Players are given per input voxel and channel as an int array broadcastable to the image, (C, 1, 1, 1) for
contrasts or (1, I, J, K) for regions; -1 marks input that no coalition removes. A removed player's input is
replaced by `baseline` (same broadcasting).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import numpy as np
import torch

from .errors import MemoryBudgetError, ModelError, brief
from .models import LoadedModel
from .progress import CancelToken, ProgressFn, check_cancel, no_progress
from .windows import make_grid

Reducer = Callable[[torch.Tensor], list[float]]


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil

    return int(psutil.virtual_memory().available)


def _is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or "out of memory" in text or "can't allocate memory" in text


@dataclasses.dataclass
class EvaluatorStats:
    windows_total: int = 0          # windows on the full-volume grid
    windows_roi: int = 0            # windows that overlap the ROI (the only ones ever run)
    window_evaluations: int = 0     # (coalition, window) forward passes actually run
    window_reuses: int = 0          # (coalition, window) pairs served from the full-coalition cache
    forward_s: float = 0.0
    total_s: float = 0.0
    batch_size: int = 0

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        pairs = self.window_evaluations + self.window_reuses
        out["cache_saving"] = self.window_reuses / pairs if pairs else 0.0
        return out


class Evaluator:
    def __init__(self, model: LoadedModel, image: np.ndarray, roi: np.ndarray, players: np.ndarray, n_players: int,
                 baseline: np.ndarray, device: torch.device, batch_size: int | None = None,
                 memory_fraction: float = 0.5, progress: ProgressFn = no_progress, cancel: CancelToken | None = None,
                 memo_bytes: int = 1 << 30, group_bytes: int = 1 << 30):
        self.model, self.device, self.n_players = model, device, n_players
        self.progress, self.cancel = progress, cancel
        self.grid = grid = make_grid(model.window, image.shape[1:])
        pad = ((0, 0),) + grid.pad
        self.image = torch.from_numpy(np.pad(image, pad).astype(np.float32, copy=False))
        self.players = self._pad_broadcast(players.astype(np.int64), pad, -1)
        self.baseline = self._padded_baseline(baseline)
        roi_p = np.pad(roi.astype(bool), grid.pad)
        self.roi_voxels = np.argwhere(roi) if roi.any() else np.zeros((0, 3), int)
        index = np.full(roi_p.shape, -1, dtype=np.int64)
        index[roi_p] = np.arange(int(roi_p.sum()))
        self.n_roi = int(roi_p.sum())
        self.windows, self.local, self.ridx, self.weight = [], [], [], []
        for w in range(len(grid.starts)):
            sub = index[grid.slices(w)].ravel()
            local = np.flatnonzero(sub >= 0)
            if local.size:
                self.windows.append(w)
                self.local.append(torch.from_numpy(local))
                self.ridx.append(torch.from_numpy(sub[local]))
                self.weight.append(torch.from_numpy(grid.importance.ravel()[local].astype(np.float64)))
        self.norm = torch.zeros(self.n_roi, dtype=torch.float64)
        for r, wgt in zip(self.ridx, self.weight):
            self.norm[r] += wgt
        self.presence = np.zeros((len(self.windows), n_players + 1), dtype=bool)
        for i, w in enumerate(self.windows):
            ids = np.unique(self._patch(self.players, w))
            self.presence[i, ids] = True  # column -1 (n_players) collects the "never removed" marker
        self.presence = self.presence[:, :n_players]
        self.present = [np.flatnonzero(row) for row in self.presence]
        self.memo: dict[tuple[int, bytes], torch.Tensor] = {}
        self.memo_bytes, self.memo_used = memo_bytes, 0
        self.group_bytes = group_bytes
        self.stats = EvaluatorStats(windows_total=len(grid.starts), windows_roi=len(self.windows))
        self.batch_size = batch_size or self._auto_batch_size(memory_fraction)
        self.stats.batch_size = self.batch_size
        self.model.to(device)
        self.base_z: list[torch.Tensor] = []
        self.base_sum = torch.zeros(0)
        self._compute_full()

    def set_baseline(self, baseline: np.ndarray) -> None:
        """Replaces what removed players take (a new intervention sample); memoised windows no longer apply."""
        self.baseline = self._padded_baseline(baseline)
        self.memo.clear()
        self.memo_used = 0

    # ----- geometry helpers -------------------------------------------------------------------------
    @staticmethod
    def _pad_broadcast(array: np.ndarray, pad, value) -> torch.Tensor:
        if all(s == 1 for s in array.shape[1:]):
            return torch.from_numpy(np.ascontiguousarray(array))
        return torch.from_numpy(np.pad(array, pad, constant_values=value))

    def _padded_baseline(self, baseline: np.ndarray) -> torch.Tensor:
        """The baseline on the padded grid. Full-volume inference pads the *ablated* image with zeros, so the padding
        holds 0 whether a player is removed or not: a per-channel baseline (mean, min) is spread over the image and
        the padding set to 0, else a removed contrast would put its baseline into the padding too."""
        baseline = baseline.astype(np.float32)
        pad = ((0, 0),) + self.grid.pad
        if all(s == 1 for s in baseline.shape[1:]) and any(a or b for a, b in self.grid.pad) and baseline.any():
            baseline = np.broadcast_to(baseline, (baseline.shape[0],) + self.grid.image_shape)
        return self._pad_broadcast(baseline, pad, 0.0)

    def _patch(self, volume: torch.Tensor, w: int) -> torch.Tensor:
        if all(s == 1 for s in volume.shape[1:]):
            return volume
        return volume[(slice(None),) + self.grid.slices(w)]

    # ----- memory ------------------------------------------------------------------------------------
    def _auto_batch_size(self, fraction: float) -> int:
        """Windows per forward pass from the free memory and a per-window estimate (inputs, outputs, activations)."""
        voxels = int(np.prod(self.grid.size))
        widths = [p.shape[0] for p in self.model.module.parameters() if p.ndim == 5] or [32]
        per_item = voxels * 4 * (self.image.shape[0] + len(self.model.labels or [0] * 4) + 8 * max(widths[:2]))
        free = available_memory(self.device) * fraction
        if free < per_item:
            raise MemoryBudgetError(
                f"One {self.grid.size} window needs about {per_item / 2**30:.1f} GiB; {free / 2**30:.1f} GiB is free on {self.device}.",
                "Close other programs, use a smaller --window, or run on a machine (or --device) with more memory.")
        cap = 4 if self.device.type == "cpu" else 64
        return int(max(1, min(cap, free // per_item)))

    # ----- evaluation --------------------------------------------------------------------------------
    def _inputs(self, pairs: list[tuple[np.ndarray, int]]) -> torch.Tensor:
        batch = []
        for coalition, i in pairs:
            w = self.windows[i]
            keep_ext = torch.from_numpy(np.append(coalition, True))
            keep = keep_ext[self._patch(self.players, w)]
            batch.append(torch.where(keep, self._patch(self.image, w), self._patch(self.baseline, w)))
        return torch.stack(batch)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """Network logits for a batch; halves the batch and retries when memory runs out."""
        t0 = time.perf_counter()
        try:
            with torch.inference_mode():
                out = self.model.forward(x.to(self.device))
                out = out[0] if isinstance(out, (list, tuple)) else out
        except Exception as exc:
            if not _is_oom(exc):
                raise self._failure(x, exc) from exc
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if x.shape[0] == 1:
                raise MemoryBudgetError(f"Out of memory running one window of {tuple(x.shape[2:])} on {self.device}.",
                                        "Use a smaller --window, --device cpu, or a machine with more memory.") from exc
            half = x.shape[0] // 2
            self.batch_size = max(1, half)
            return torch.cat([self._forward(x[:half]), self._forward(x[half:])])
        if not torch.is_tensor(out) or out.ndim != x.ndim or out.shape[0] != x.shape[0] or out.shape[2:] != x.shape[2:]:
            shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise self._failure(x, None, f"returned {shape}, not (windows, classes, *window)")
        self.stats.forward_s += time.perf_counter() - t0
        return out.float().flatten(2).cpu()

    def _failure(self, x: torch.Tensor, exc: BaseException | None, what: str = "") -> ModelError:
        """A network that rejects its input: name the shapes, so the user sees which side is wrong."""
        m = self.model
        takes = f"{m.in_channels} channels" + (f" ({', '.join(m.channel_names)})" if m.channel_names else "") \
            if m.in_channels else "an unknown number of channels"
        detail = what or f"failed: {brief(exc)}"
        return ModelError(f"The model {m.name} was given a batch of shape {tuple(x.shape)} (windows, channels, *window) "
                          f"and {detail}. It takes {takes}; {self.image.shape[0]} images were given.",
                          "Check the images against the model (one --image per input channel, in its order; --channels, "
                          "--window and --preprocess if its file does not say).")

    def _compute_full(self) -> None:
        t_start = time.perf_counter()
        full = np.ones(self.n_players, dtype=bool)
        pairs = [(full, i) for i in range(len(self.windows))]
        k = None
        for start in range(0, len(pairs), self.batch_size):
            check_cancel(self.cancel)
            z = self._forward(self._inputs(pairs[start:start + self.batch_size]))
            for b, (_, i) in enumerate(pairs[start:start + self.batch_size]):
                self.base_z.append(z[b][:, self.local[i]])
            k = z.shape[1]
        self.base_sum = torch.zeros((k, self.n_roi), dtype=torch.float64)
        for i, z in enumerate(self.base_z):
            self.base_sum[:, self.ridx[i]] += self.weight[i] * z.double()
        self.stats.window_evaluations += len(pairs)
        self.stats.total_s += time.perf_counter() - t_start

    def full_logits(self) -> torch.Tensor:
        """Fused logits (K, R) at the ROI voxels with every player present."""
        return (self.base_sum / self.norm).float()

    def affected(self, coalitions: np.ndarray) -> np.ndarray:
        """(n, W): whether coalition n removes a player present in window W."""
        return ((~coalitions).astype(np.int32) @ self.presence.T.astype(np.int32)) > 0

    def _key(self, coalition: np.ndarray, i: int) -> bytes:
        """What window i's input depends on: which of the players present in it the coalition keeps."""
        return np.packbits(coalition[self.present[i]]).tobytes()

    def evaluate(self, coalitions: np.ndarray, reducer: Reducer, stage: str = "coalitions", group: int = 16) -> np.ndarray:
        """reducer(fused logits (K, R)) for each coalition (rows of a bool (n, P) matrix).

        A window's logits depend only on which of *its* players the coalition keeps, so they are memoised under
        that key (as the change from the full coalition, within a memory cap) and shared by every coalition,
        in this call or a later one, that keeps the same players there. Coalitions are summed `group` at a time,
        and a window run is shared within a group even when the memo is full; the group shrinks so that its
        accumulators (one float64 (K, R) each) fit `group_bytes` (exact enumeration asks for all 2^n at once).
        """
        t_start = time.perf_counter()
        coalitions = np.asarray(coalitions, dtype=bool)
        group = max(1, min(group, self.group_bytes // (self.base_sum.numel() * self.base_sum.element_size())))
        affected = self.affected(coalitions)
        total = int(affected.sum())
        done = 0
        self.progress(0, total, stage)
        out = []
        for g0 in range(0, len(coalitions), group):
            check_cancel(self.cancel)
            rows = range(g0, min(g0 + group, len(coalitions)))
            acc = {n: self.base_sum.clone() for n in rows}
            pending: dict[tuple[int, bytes], list[int]] = {}
            for n in rows:
                affected_windows = np.flatnonzero(affected[n])
                self.stats.window_reuses += len(self.windows) - len(affected_windows)
                for i in affected_windows:
                    key = (int(i), self._key(coalitions[n], i))
                    if key in self.memo:
                        acc[n][:, self.ridx[i]] += self.weight[i] * self.memo[key].double()
                        self.stats.window_reuses += 1
                        done += 1
                    else:
                        pending.setdefault(key, []).append(n)
            jobs = list(pending)
            self.stats.window_reuses += sum(len(v) - 1 for v in pending.values())
            done += sum(len(v) - 1 for v in pending.values())
            for start in range(0, len(jobs), self.batch_size):
                check_cancel(self.cancel)
                chunk = jobs[start:start + self.batch_size]
                z = self._forward(self._inputs([(coalitions[pending[key][0]], key[0]) for key in chunk]))
                for b, key in enumerate(chunk):
                    i = key[0]
                    delta = z[b][:, self.local[i]] - self.base_z[i]
                    if self.memo_used + delta.numel() * 4 <= self.memo_bytes:
                        self.memo[key] = delta
                        self.memo_used += delta.numel() * 4
                    for n in pending[key]:
                        acc[n][:, self.ridx[i]] += self.weight[i] * delta.double()
                done += len(chunk)
                self.stats.window_evaluations += len(chunk)
                self.progress(done, total, stage)
            out.extend(reducer((acc[n] / self.norm).float()) for n in rows)
        self.stats.total_s += time.perf_counter() - t_start
        if total == 0:
            self.progress(0, 0, stage)
        return np.asarray(out, dtype=np.float64)
