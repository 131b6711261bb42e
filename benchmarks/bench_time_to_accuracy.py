"""Time to the same accuracy: SegXAI region SHAP against Captum KernelShap + MONAI full-volume sliding window.

    python benchmarks/bench_time_to_accuracy.py --quick            # brain demo case only (< 10 min on 2 idle cores)
    python benchmarks/bench_time_to_accuracy.py [--cases brain,ct,brats] [--seeds 5] [--cap-factor 12] [--json PATH]
    python benchmarks/bench_time_to_accuracy.py --cases brats --device cuda   # the BraTS-sized case on a GPU
    python benchmarks/bench_time_to_accuracy.py --write-reference brain --reference-seed 1000   # (and 1001, …)

Both sides play the same game: the same players (supervoxels in the ROI's support crop, or organs), the same
sliding-window grid and Gaussian fusion, the same baseline (0 in model space) and the same value (soft Dice of the
target inside the ROI against the model's own full prediction). Outside the players every voxel stays as it is.

- Naive: Captum `KernelShap` on the n player switches; every coalition is a full volume through MONAI's
  `sliding_window_inference`. Captum is not incremental, so it runs a doubling ladder of budgets from scratch, and
  its time is the time of the first (smallest) budget whose map passes: the budget an oracle would have picked.
  Captum draws coalitions one by one from the seeded generator, so budget 2b begins with budget b's batches: those
  are replayed from memory and charged the forward time they took, which makes each rung cost what a from-scratch
  run costs while the benchmark runs the shared prefix only once.
- SegXAI: a fresh ROI-restricted `Evaluator` (windows over the ROI only, memoised window logits, timed from its
  construction) and an estimator. `exact` enumerates all 2^n coalitions: region SHAP's default when no budget is
  given and n ≤ 12 (organ players); larger games skip it. `permutation-cached` (window_games.py, fits the window
  cache) is anytime: its time is when its running estimate first passes; it is region SHAP's default above 12
  players. The default shapiq approximator (`estimators.DEFAULT_ESTIMATOR`, run as replicates) climbs the same
  doubling ladder as Captum.
- Passing: relative L2 error ≤ 0.1 against the reference and the same five top regions (largest values).
- Reference: exact enumeration when the players allow it (organ players). Else two different estimators on
  independent samples: the permutation Monte Carlo mean over half of the stored large-budget runs, and the
  Shapley-kernel regression on the coalitions of the other half; their agreement is printed and their mean is the
  reference. The runs (`--write-reference`, every coalition and value recorded) live in benchmarks/references/
  with a fingerprint of the game (players, v(∅), v(N)) and count only when the fingerprint matches.
- The naive side's time cap is `--cap-factor` × SegXAI's median time (12; at least `--min-cap` s). A naive run that
  reaches the cap is stopped and reported as "> cap"; the ratio is then a lower bound ("> x×"), never an estimate.
- `--device cuda` plays the same game on a GPU, in float32 with TF32 off (the game stays the CPU's to ~1e-6).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import statistics
import sys
import time
import warnings
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from captum.attr import KernelShap
from common import CHANNELS, tumour_roi
from monai.inferers import sliding_window_inference

from SegXAILib.demo.brain import make_brain_case
from SegXAILib.demo.run_demo import CT_MODEL, DEMO_SEED, demo_models, tumour_box
from SegXAILib.demo.torso import ORGANS, make_torso_case
from SegXAILib.estimators import DEFAULT_ESTIMATOR, all_coalitions, estimate_shapley, exact_shapley
from SegXAILib.evaluator import Evaluator
from SegXAILib.methods.region_shap import EXACT_UP_TO
from SegXAILib.models import ModelOptions, load_models
from SegXAILib.players import build_players, support_box
from SegXAILib.targets import parse_target
from SegXAILib.values import soft_dice
from SegXAILib.volumes import Case, Geometry
from SegXAILib.window_games import permutation_shapley
from SegXAILib.windows import make_grid

warnings.filterwarnings("ignore", category=UserWarning)
REL_L2, TOP = 0.1, 5
REFERENCES = Path(__file__).parent / "references"
DEVICE = torch.device("cpu")   # --device


class OverCap(Exception):
    """A run reached its time cap."""


class NoReference(Exception):
    """No stored reference runs match the game: the case is skipped, with the command that makes them."""


class Passed(Exception):
    """An anytime run's estimate passed; carries the time it took."""


@dataclasses.dataclass
class Game:
    key: str
    name: str
    model: object
    image: np.ndarray          # (C, I, J, K) model space
    roi: np.ndarray
    players: object
    target: object
    ref: torch.Tensor          # the model's own hard prediction at the ROI voxels

    @property
    def n(self) -> int:
        return self.players.n

    def evaluator(self) -> Evaluator:
        return Evaluator(self.model, self.image, self.roi, self.players.ids[None], self.n, np.zeros((1, 1, 1, 1), np.float32), DEVICE)

    def value(self, logits: torch.Tensor) -> list[float]:
        return [soft_dice(logits, self.target, self.ref)]

    def fingerprint(self, v_empty: float, v_full: float) -> dict:
        return {"players": self.n, "ids_sha256": hashlib.sha256(self.players.ids.tobytes()).hexdigest()[:16],
                "v_empty": round(v_empty, 6), "v_full": round(v_full, 6)}


def _game(key, name, model, case_images, geometry, roi, kind, target, n_players=24, labels=None, label_names=None) -> Game:
    prepared = model.prepare(Case(case_images, geometry, list(model.channel_names or CHANNELS), [""] * len(case_images)))
    box = support_box(make_grid(model.window, roi.shape), roi)
    players = build_players(kind, prepared.image, prepared.geometry.spacing, box, n_players=n_players, labels=labels,
                            label_names=label_names)
    target = parse_target(target, model.labels, model.activation, len(model.labels))
    game = Game(key, name, model, prepared.image, roi, players, target, torch.zeros(0, dtype=torch.bool))
    ev = game.evaluator()
    game.ref = target.hard(ev.full_logits())
    return game


def brain_game() -> Game:
    model = load_models([demo_models()[0]], ModelOptions(trust=True))[0]
    case = make_brain_case(11)
    return _game("brain", "brain demo case (fold 0, tumour box, WT)", model, case.images, Geometry(case.labels.shape, case.affine),
                 tumour_roi(case.labels), "supervoxel", "WT")


def brats_game() -> Game:
    """The demo subject at BraTS geometry (1 mm, 240×240×155) under the trained fold-0 model (WT Dice 0.91 there).

    Not a random-weight network: on a GPU, a random SegResNet's game had v(N) − v(∅) = 0.02 and top-5 gaps below the
    noise of one permutation pair, so no estimator could be timed to a stable top 5 on it."""
    model = load_models([demo_models()[0]], ModelOptions(trust=True))[0]
    case = make_brain_case(7, shape=(240, 240, 155), spacing=1.0)
    return _game("brats", "BraTS-sized 240×240×155 at 1 mm (demo fold 0, 64³ windows, tumour box, WT)", model, case.images,
                 Geometry(case.labels.shape, case.affine), tumour_roi(case.labels), "supervoxel", "WT", n_players=27)


def ct_game() -> Game:
    model = load_models([CT_MODEL], ModelOptions(trust=True))[0]
    case = make_torso_case(DEMO_SEED)
    roi = tumour_box((case.labels == 2).astype(np.uint8)).astype(bool)
    return _game("ct", "torso CT (organ players, lesion box, lesion)", model, case.images, case.geometry, roi, "organ", "lesion",
                 labels=case.organs, label_names=dict(ORGANS))


# ----- the two sides ---------------------------------------------------------------------------------------
def naive_map(game: Game, budget: int, seed: int, cap: float, batch: int, memo: dict) -> tuple[np.ndarray, float]:
    """Captum KernelShap on the player switches; each coalition through MONAI's full-volume sliding window.

    Returns the map and the seconds a from-scratch run takes: batches found in `memo` (run at a smaller budget of the
    same seed) are not run again but charged the forward time they took then."""
    x_full = torch.from_numpy(game.image)[None].to(DEVICE)
    ids = torch.from_numpy(game.players.ids.astype(np.int64)).to(DEVICE)
    roi = torch.from_numpy(game.roi).to(DEVICE)
    window = game.model.window
    t0, replayed = time.perf_counter(), 0.0

    def forward(z: torch.Tensor) -> torch.Tensor:
        nonlocal replayed
        if time.perf_counter() - t0 + replayed > cap:
            raise OverCap
        key = z.numpy().tobytes()
        if key in memo:
            values, seconds = memo[key]
            replayed += seconds
            return values
        start = time.perf_counter()
        z = z.to(DEVICE)
        keep = torch.cat([z > 0.5, torch.ones(z.shape[0], 1, dtype=torch.bool, device=DEVICE)], 1)[:, ids]   # id -1: kept
        x = torch.where(keep[:, None], x_full, torch.zeros((), device=DEVICE))
        with torch.inference_mode():
            out = sliding_window_inference(x, window.size, batch, game.model.forward, overlap=window.overlap, mode=window.mode,
                                           sigma_scale=window.sigma_scale)
        values = torch.tensor([game.value(o[:, roi].cpu())[0] for o in out], dtype=torch.float64)
        memo[key] = values, time.perf_counter() - start
        return values

    torch.manual_seed(seed)
    phi = KernelShap(forward).attribute(torch.ones(1, game.n, dtype=torch.float64), baselines=0.0, n_samples=budget,
                                        perturbations_per_eval=batch)
    return phi[0].numpy(), time.perf_counter() - t0 + replayed


def _capped(ev: Evaluator, game: Game, deadline: float):
    def evaluate(coalitions: np.ndarray) -> np.ndarray:
        if time.perf_counter() > deadline:
            raise OverCap
        return ev.evaluate(np.atleast_2d(coalitions), game.value, group=len(np.atleast_2d(coalitions)))[:, 0]
    return evaluate


def shapiq_default(evaluate, n: int, budget: int, seed: int) -> np.ndarray:
    """The default shapiq approximator (estimators.DEFAULT_ESTIMATOR) as the engine runs it: independent replicates."""
    return estimate_shapley(evaluate, n, budget, DEFAULT_ESTIMATOR, seed)["values"]


def passes(phi: np.ndarray, ref: np.ndarray) -> bool:
    return rel_l2(phi, ref) <= REL_L2 and top_set(phi) == top_set(ref)


def rel_l2(phi: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(phi - ref) / np.linalg.norm(ref))


def top_set(phi: np.ndarray) -> set[int]:
    return set(np.argsort(-phi, kind="stable")[:TOP].tolist())


def ladder(run, start: int, cap: float, ref: np.ndarray) -> tuple[float | None, int | None]:
    """`run(budget, cap) -> (map, seconds)` at start, 2·start, …; (seconds, budget) of the first that passes,
    (None, None) past the cap."""
    budget = start
    while True:
        try:
            phi, seconds = run(budget, cap)
        except OverCap:
            return None, None
        if passes(phi, ref):
            return seconds, budget
        if seconds > cap:
            return None, None
        budget *= 2


def ours_permutation(game: Game, seed: int, cap: float, ref: np.ndarray) -> tuple[float | None, int | None]:
    """Anytime: a fresh evaluator, permutation pairs until the running estimate passes (or the cap)."""
    t0 = time.perf_counter()
    ev = game.evaluator()
    evaluate = _capped(ev, game, t0 + cap)

    def check(values, std_error, pairs):
        if passes(values, ref):
            raise Passed(time.perf_counter() - t0, pairs * 2 * (game.n + 1))

    try:
        permutation_shapley(evaluate, game.n, 10 ** 9, seed, on_pair=check)
    except Passed as done:
        return done.args
    except OverCap:
        pass
    return None, None


def ours_shapiq(game: Game, seed: int, cap: float, ref: np.ndarray) -> tuple[float | None, int | None]:
    def run(budget, cap):
        t0 = time.perf_counter()
        ev = game.evaluator()
        return shapiq_default(_capped(ev, game, t0 + cap), game.n, budget, seed), time.perf_counter() - t0
    return ladder(run, 2 * game.n + 2, cap, ref)


def ours_exact(game: Game, seed: int, cap: float, ref: np.ndarray) -> tuple[float | None, int | None]:
    """Region SHAP's default when no budget is given and the players are few (≤ EXACT_UP_TO): all 2^n coalitions
    in one call to a fresh evaluator, which runs each distinct (window, pattern) once; the cap is checked after it.
    `seed` plays no part."""
    t0 = time.perf_counter()
    ev = game.evaluator()
    phi = exact_shapley(ev.evaluate(all_coalitions(game.n), game.value, group=2 ** game.n)[:, 0], game.n)
    seconds = time.perf_counter() - t0
    return (seconds, 2 ** game.n) if passes(phi, ref) and seconds <= cap else (None, None)


OURS = {"exact": ours_exact, "permutation-cached": ours_permutation, DEFAULT_ESTIMATOR: ours_shapiq}


# ----- reference -------------------------------------------------------------------------------------------
def _shared_evaluate(game: Game):
    ev = game.evaluator()
    ev.memo_bytes = 4 << 30
    return ev, (lambda c: ev.evaluate(np.atleast_2d(c), game.value, group=len(np.atleast_2d(c)))[:, 0])


def write_reference(game: Game, seed: int, pairs: int) -> Path:
    """Antithetic permutation pairs on one evaluator, every coalition and value recorded, saved after each pair
    (a long run can be stopped and still used; runs with other seeds add to it)."""
    ev, evaluate = _shared_evaluate(game)
    ends = evaluate(np.array([np.zeros(game.n, bool), np.ones(game.n, bool)]))
    REFERENCES.mkdir(exist_ok=True)
    path = REFERENCES / f"{game.key}.seed{seed}.json"
    record = {"game": game.name, "fingerprint": game.fingerprint(*ends), "seed": seed, "torch": torch.__version__,
              "monai": version("monai"), "device": str(DEVICE), "threads": torch.get_num_threads(), "seconds": 0.0, "pairs": []}
    t0 = time.perf_counter()

    def recording(coalitions):
        values = evaluate(coalitions)
        bits = (coalitions.astype(np.int64) << np.arange(game.n)).sum(1)
        record["pairs"].append({"masks": bits.tolist(), "values": values.tolist()})
        record["seconds"] = time.perf_counter() - t0
        partial = path.with_suffix(".tmp")   # atomic: a run stopped at any moment leaves a readable file
        partial.write_text(json.dumps(record))
        partial.replace(path)
        print(f"  seed {seed}: {len(record['pairs'])} permutation pairs, {record['seconds']:.0f} s", flush=True)
        return values

    permutation_shapley(recording, game.n, pairs * 2 * (game.n + 1), seed)
    return path


def _stored_runs(game: Game, fingerprint: dict) -> list[dict]:
    runs = [json.loads(p.read_text()) for p in sorted(REFERENCES.glob(f"{game.key}.seed*.json"))]
    return [r for r in runs if r["pairs"] and _same_game(r["fingerprint"], fingerprint)]


def _same_game(a: dict, b: dict) -> bool:
    """Same players, and v(∅), v(N) within 1e-4 (thread counts change the logits in the 6th digit)."""
    return (a["players"], a["ids_sha256"]) == (b["players"], b["ids_sha256"]) and \
        all(abs(a[k] - b[k]) <= 1e-4 for k in ("v_empty", "v_full"))


def monte_carlo(runs: list[dict], n: int) -> np.ndarray:
    """Permutation sampling: the mean marginal contribution along the recorded permutations."""
    total, count = np.zeros(n), 0
    for run in runs:
        for pair in run["pairs"]:
            for half in (slice(0, n + 1), slice(n + 1, 2 * n + 2)):
                masks, values = np.array(pair["masks"][half]), np.array(pair["values"][half])
                added = np.log2(masks[1:] ^ masks[:-1]).round().astype(int)
                total[added] += np.diff(values)
                count += 1
    return total / count


def kernel_regression(runs: list[dict], n: int, v_empty: float, v_full: float) -> np.ndarray:
    """Shapley-kernel least squares on the recorded coalitions (a different estimator from the same kind of samples).

    A permutation prefix of size s is drawn with probability 1 / ((n + 1) C(n, s)); the kernel weight is
    (n − 1) / (C(n, s) s (n − s)), so each sample is weighted by their ratio, ∝ 1 / (s (n − s))."""
    masks = np.concatenate([np.array(p["masks"]) for r in runs for p in r["pairs"]])
    values = np.concatenate([np.array(p["values"]) for r in runs for p in r["pairs"]])
    z = ((masks[:, None] >> np.arange(n)) & 1).astype(float)
    size = z.sum(1)
    keep = (size > 0) & (size < n)
    z, values, size = z[keep], values[keep], size[keep]
    sw = np.sqrt(1.0 / (size * (n - size)))
    a = z[:, :-1] - z[:, -1:]
    b = values - v_empty - z[:, -1] * (v_full - v_empty)
    head = np.linalg.lstsq(a * sw[:, None], b * sw, rcond=None)[0]
    return np.append(head, v_full - v_empty - head.sum())


def reference(game: Game) -> tuple[np.ndarray, str]:
    """Exact when the players are few; else two different estimators on two independent halves of the stored runs."""
    ev, evaluate = _shared_evaluate(game)
    if game.n <= EXACT_UP_TO:
        values = evaluate(all_coalitions(game.n))
        return exact_shapley(values, game.n), f"exact enumeration ({2 ** game.n} coalitions)"
    ends = evaluate(np.array([np.zeros(game.n, bool), np.ones(game.n, bool)]))
    fingerprint = game.fingerprint(*ends)
    runs = _stored_runs(game, fingerprint)
    if len(runs) < 2:
        raise NoReference(f"No stored reference runs for {game.name} match this game ({fingerprint}). Compute them (slow; run "
                 f"several seeds at once, stop them whenever):\n  python {Path(__file__).name} --write-reference {game.key} --reference-seed 1000\n"
                 f"  python {Path(__file__).name} --write-reference {game.key} --reference-seed 1001")
    half_a, half_b = runs[0::2], runs[1::2]
    a, b = monte_carlo(half_a, game.n), kernel_regression(half_b, game.n, *ends)
    pairs = [sum(len(r["pairs"]) for r in h) for h in (half_a, half_b)]
    how = (f"mean of permutation Monte Carlo ({pairs[0]} antithetic pairs) and Shapley-kernel regression "
           f"({pairs[1] * 2 * (game.n + 1)} coalitions from {pairs[1]} other pairs); they agree to relative L2 {rel_l2(a, b):.3f}, "
           f"top-{TOP} {'identical' if top_set(a) == top_set(b) else 'DIFFERENT'}")
    return (a + b) / 2, how


# ----- the benchmark ---------------------------------------------------------------------------------------
def summary(times: list[float | None], cap: float) -> dict:
    reached = [t for t in times if t is not None]
    out = {"seconds": times, "reached": len(reached), "runs": len(times), "cap_s": cap}
    if len(reached) > len(times) / 2:
        out.update(median_s=statistics.median([t if t is not None else float("inf") for t in times]), min_s=min(reached),
                   max_s=max(times, key=lambda t: float("inf") if t is None else t))
    return out


def fmt(s: dict) -> str:
    if "median_s" not in s:
        return f"> {s['cap_s']:.0f} s (cap; {s['reached']}/{s['runs']} seeds reached)"
    top = "> cap" if s["max_s"] is None else f"{s['max_s']:.1f}"
    return f"median {s['median_s']:.1f} s (range {s['min_s']:.1f}–{top} s, {s['reached']}/{s['runs']} seeds)"


def run_case(game: Game, estimators: list[str], seeds: int, cap_factor: float, min_cap: float, ours_cap: float) -> dict:
    try:
        ref, how = reference(game)
    except NoReference as missing:
        print(f"\n{game.name}: skipped. {missing}", flush=True)
        return {"case": game.name, "skipped": str(missing)}
    print(f"\n{game.name}: {game.n} players, reference: {how}", flush=True)
    row = {"case": game.name, "players": game.n, "reference": how, "ours": {}}
    if game.n > EXACT_UP_TO and "exact" in estimators:
        print(f"  SegXAI exact: not run ({game.n} players; region SHAP enumerates up to {EXACT_UP_TO})", flush=True)
        estimators = [e for e in estimators if e != "exact"]
    for estimator in estimators:
        results = [OURS[estimator](game, seed, ours_cap, ref) for seed in range(seeds)]
        row["ours"][estimator] = summary([r[0] for r in results], ours_cap) | {"coalitions": [r[1] for r in results]}
        print(f"  SegXAI {estimator}: {fmt(row['ours'][estimator])}; coalitions {[r[1] for r in results]}", flush=True)
    best = min(estimators, key=lambda e: row["ours"][e].get("median_s", float("inf")))
    ours = row["ours"][best]
    if "median_s" not in ours:
        row["naive"] = None
        print(f"time-to-accuracy ratio: n/a (SegXAI did not reach the reference within {ours_cap:.0f} s) ({game.name}, {best})")
        return row
    cap = max(min_cap, cap_factor * ours["median_s"])
    batch = game.evaluator().batch_size
    results = []
    for seed in range(seeds):
        memo = {}
        results.append(ladder(lambda b, c: naive_map(game, b, seed, c, batch, memo), 2 * game.n + 2, cap, ref))
        print(f"    Captum seed {seed}: {results[-1][0] or f'> {cap:.0f}'} s, coalitions {results[-1][1]}", flush=True)
    row["naive"] = summary([r[0] for r in results], cap) | {"coalitions": [r[1] for r in results]}
    print(f"  Captum KernelShap + MONAI full volume: {fmt(row['naive'])}; coalitions {[r[1] for r in results]}", flush=True)
    if "median_s" in row["naive"]:
        ratio = f"{row['naive']['median_s'] / ours['median_s']:.1f}"
    else:
        ratio = f"> {cap / ours['median_s']:.1f}"
    row.update(best=best, ratio=ratio)
    print(f"time-to-accuracy ratio: {ratio}× ({game.name}, {best})", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the brain demo case only, permutation-cached only")
    parser.add_argument("--cases", default="brain,ct,brats")
    parser.add_argument("--estimators", default=f"exact,permutation-cached,{DEFAULT_ESTIMATOR}",
                        help=f"exact (region SHAP's default up to {EXACT_UP_TO} players), permutation-cached (its default "
                             f"above), {DEFAULT_ESTIMATOR}")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--cap-factor", type=float, default=12.0, help="naive cap = this × SegXAI's median time")
    parser.add_argument("--min-cap", type=float, default=20.0)
    parser.add_argument("--ours-cap", type=float, default=600.0)
    parser.add_argument("--write-reference", choices=["brain", "brats"])
    parser.add_argument("--reference-seed", type=int, nargs="+", default=[1000], help="one or more; run one after another")
    parser.add_argument("--reference-pairs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (float32, TF32 off)")
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    global DEVICE
    DEVICE = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    setup = {"torch": torch.__version__, "threads": torch.get_num_threads(), "monai": version("monai"),
             "captum": version("captum"), "device": torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu",
             "seeds": args.seeds, "cap_factor": args.cap_factor}
    print(", ".join(f"{k} {v}" for k, v in setup.items()), flush=True)
    makers = {"brain": brain_game, "ct": ct_game, "brats": brats_game}
    if args.write_reference:
        game = makers[args.write_reference]()
        for seed in args.reference_seed:
            write_reference(game, seed, args.reference_pairs)
        return
    cases = ["brain"] if args.quick else args.cases.split(",")
    estimators = ["permutation-cached"] if args.quick else args.estimators.split(",")
    rows = [run_case(makers[c](), estimators, args.seeds, args.cap_factor, args.min_cap, args.ours_cap) for c in cases]
    if all("skipped" in r for r in rows):
        sys.exit(1)
    if args.json:
        Path(args.json).write_text(json.dumps({"setup": setup, "cases": rows}, indent=2, default=str))
    if not args.quick and "ratio" in rows[0]:   # the headline (first case) comes last
        print(f"time-to-accuracy ratio: {rows[0]['ratio']}× ({rows[0]['case']}, {rows[0]['best']})")


if __name__ == "__main__":
    main()
