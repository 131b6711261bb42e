"""TracIn for segmentation: known answers on a tiny two-branch network trained in the test.

The network sees two channels through a block-masked convolution (units 0-1 read channel A only, units 2-3
channel B only), then a 1×1×1 head; the background offset is a buffer, not a parameter. A case whose evidence is only in
channel B therefore has gradients only in the B half of the parameters, and a case with evidence only in channel A
only in the A half: their TracIn inner product is exactly zero. So, for a channel-B test case, the one channel-B
training case is decisive by construction.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from SegXAILib.errors import InputError
from SegXAILib.methods.tracin import Gradients, projection_matrix, soft_dice_losses
from SegXAILib.models import ModelOptions
from SegXAILib.request import ExplainRequest, TracInOptions
from SegXAILib.result import read_result
from SegXAILib.run import run
from SegXAILib.targets import parse_target
from SegXAILib.volumes import Geometry, write_volume

SHAPE = (12, 12, 12)
GEO = Geometry(SHAPE, np.eye(4))
LABELS = {"background": 0, "fg": 1}


class Tiny(torch.nn.Module):
    def __init__(self, in_channels: int = 2):
        super().__init__()
        self.features = torch.nn.Conv3d(in_channels, 4, 3, padding=1, bias=False)
        self.head = torch.nn.Conv3d(4, 2, 1, bias=False)
        block = torch.zeros(4, in_channels, 1, 1, 1)
        block[:2, : in_channels // 2] = block[2:, in_channels // 2:] = 1   # units 0-1 read the first half of the channels
        self.register_buffer("block", block)
        self.register_buffer("offset", torch.tensor([2.0, -2.0]).view(1, 2, 1, 1, 1))

    def forward(self, x):
        features = torch.nn.functional.conv3d(x, self.features.weight * self.block, padding=1)
        return self.head(torch.relu(features)) + self.offset


def make_tiny(in_channels: int = 2) -> Tiny:
    """Factory for `--factory test_tracin:make_tiny`."""
    return Tiny(in_channels)


def blob_case(channel: int | None, lo, size: int = 4, label_shift=(0, 0, 0), decoy=None):
    """(images (2, *SHAPE), labels): a bright cube in `channel`, labelled fg (optionally shifted); `decoy`: (channel,
    lo, size) another bright cube left labelled background."""
    images = np.zeros((2,) + SHAPE, np.float32)
    labels = np.zeros(SHAPE, np.uint8)
    box = tuple(slice(a, a + size) for a in lo)
    if channel is not None:
        images[channel][box] = 1.0
        labels[tuple(slice(a + s, a + s + size) for a, s in zip(lo, label_shift))] = 1
    if decoy is not None:
        c, dlo, dsize = decoy
        images[c][tuple(slice(a, a + dsize) for a in dlo)] = 1.0
    return images, labels


def train(cases, path, steps=(4, 8, 12), lr=0.5, seed=0) -> list[str]:
    """A few full-batch SGD steps of soft-Dice loss on the cases; saves a checkpoint (state dict) at each of `steps`."""
    torch.manual_seed(seed)
    net = Tiny()
    with torch.no_grad():
        net.features.weight.abs_().add_(0.05)
    x = torch.from_numpy(np.stack([c[0] for c in cases]))
    y = torch.from_numpy(np.stack([c[1] for c in cases])).float()
    optimiser = torch.optim.SGD(net.parameters(), lr=lr)
    specs = []
    for step in range(1, max(steps) + 1):
        optimiser.zero_grad()
        p = torch.softmax(net(x), 1)[:, 1]
        loss = sum(soft_dice_losses(p[b].flatten(), y[b].flatten(), torch.ones(y[b].numel()), None, 0)[0] for b in range(len(cases)))
        loss.backward()
        optimiser.step()
        if step in steps:
            file = path / f"step{step}.pt"
            torch.save(net.state_dict(), file)
            specs.append(f"{file}:{lr}")
    torch.save(net.state_dict(), path / "model.pt")
    return specs


def write_training(folder, cases, names):
    for name, (images, labels) in zip(names, cases):
        sub = folder / name
        sub.mkdir(parents=True)
        write_volume(images[0], GEO, sub / "A.nii.gz")
        write_volume(images[1], GEO, sub / "B.nii.gz")
        write_volume(labels, GEO, sub / "labels.nii.gz")
    return folder


def scenario(tmp, cases, names, test, steps=(4, 8, 12)):
    """Writes training cases, trains, writes the test case; returns what a request needs."""
    tmp.mkdir(parents=True, exist_ok=True)
    specs = train(cases, tmp, steps)
    write_training(tmp / "train", cases, names)
    images, labels = test
    paths = [str(write_volume(images[c], GEO, tmp / f"test_{n}.nii.gz")) for c, n in enumerate("AB")]
    return {"images": paths, "model": str(tmp / "model.pt"), "checkpoints": specs, "train": str(tmp / "train"),
            "truth": str(write_volume(labels, GEO, tmp / "test_labels.nii.gz")),
            "roi": str(write_volume(np.ones(SHAPE, np.uint8), GEO, tmp / "roi.nii.gz")), "dir": tmp}


def request(s, out, **tracin) -> ExplainRequest:
    return ExplainRequest(images=s["images"], models=[s["model"]], out=str(s["dir"] / out), targets=["1"], method="tracin",
                          roi_mask=s["roi"], reference=s["truth"], device="cpu",
                          model_options=ModelOptions(factory="test_tracin:make_tiny", labels=LABELS, channels=["A", "B"]),
                          tracin=TracInOptions(**{"training_dir": s["train"], "checkpoints": s["checkpoints"], **tracin}))


A_CASES = [blob_case(0, lo) for lo in ((1, 1, 1), (6, 2, 5), (3, 7, 2), (7, 6, 7))]
TEST_B = blob_case(1, (6, 6, 2))


@pytest.fixture(scope="module")
def decisive(tmp_path_factory):
    cases = A_CASES + [blob_case(1, (1, 2, 6)), blob_case(0, (2, 2, 2), decoy=(1, (7, 7, 7), 4))]
    names = ["a1", "a2", "a3", "a4", "decisive", "opponent"]
    return scenario(tmp_path_factory.mktemp("decisive"), cases, names, TEST_B)


def test_decisive_training_case_ranks_first_and_the_channel_a_cases_score_zero(decisive):
    result = read_result(run(request(decisive, "exact", patches=2, top_k=3)))
    scores = {e["id"]: e["score"] for e in result["influence"]}
    assert result["proponents"][0]["id"] == "decisive" and result["ranking"][0] == "decisive"
    assert scores["decisive"] > 0
    for name in ("a1", "a2", "a3", "a4"):  # their gradients live in the other half of the parameters
        assert abs(scores[name]) <= 1e-9 * scores["decisive"]
    # a bright channel-B cube labelled background pulls the other way
    assert result["opponents"][0]["id"] == "opponent" and scores["opponent"] < 0
    top = result["proponents"][0]
    assert len(top["per_checkpoint"]) == 3 and np.isclose(sum(top["per_checkpoint"]), top["score"])
    # the patch that holds the decisive cube carries its influence
    best = max(top["patches"], key=lambda p: p["score"])
    assert all(lo <= c < hi for (lo, hi), c in zip(best["box"], (2, 3, 7)))
    players = {p["name"]: p["value"] for p in result["players"]}
    assert players == pytest.approx(scores)
    assert result["projection"]["exact"] and result["parameters"]["count"] == 8 and result["parameters"]["modules"] == ["head"]
    assert result["test_loss"]["final_weights"] > 0 and len(result["test_loss"]["per_checkpoint"]) == 3
    folder = decisive["dir"] / "exact"
    assert (folder / result["thumbnails"]["file"]).read_bytes()[:4] == b"\x89PNG"
    assert [p["role"] for p in result["thumbnails"]["panels"]][:2] == ["test", "proponent"]


def test_random_projection_keeps_the_top_case(decisive):
    exact = read_result(run(request(decisive, "exact-all", layers=["features", "head"])))
    projected = read_result(run(request(decisive, "projected", layers=["features", "head"], projection_dim=48)))
    assert projected["projection"] == {**projected["projection"], "dimension": 48, "seed": 0, "exact": False}
    assert exact["ranking"][0] == projected["ranking"][0] == "decisive"
    e = {x["id"]: x["score"] for x in exact["influence"]}
    p = {x["id"]: x["score"] for x in projected["influence"]}
    assert p["decisive"] == pytest.approx(e["decisive"], rel=0.5)
    assert [x["id"] for x in projected["self_influence"]] == [x["id"] for x in exact["self_influence"]]  # exact norms either way


def test_duplicate_of_the_test_case_is_the_top_proponent(tmp_path):
    cases = A_CASES + [blob_case(1, (1, 1, 6), size=3), blob_case(1, (2, 6, 1), size=5), TEST_B]
    s = scenario(tmp_path, cases, ["a1", "a2", "a3", "a4", "b3", "b5", "duplicate"], TEST_B)
    result = read_result(run(request(s, "cosine", score="cosine")))
    top = result["proponents"][0]
    # cos(∇L_test, ∇L_dup) = 1 at every checkpoint: the largest score there can be, Σ_k lr_k
    assert top["id"] == "duplicate" and top["score"] == pytest.approx(sum(c["learning_rate"] for c in result["checkpoints"]), rel=1e-5)
    assert top["train_loss_per_checkpoint"] == pytest.approx(result["test_loss"]["per_checkpoint"], rel=1e-4)
    # raw TracIn: the duplicate's score is Σ lr ‖∇L_test‖², its own self-influence; by Cauchy–Schwarz only a case with a
    # larger self-influence (gradient norm) can score above it — raw TracIn's known pull towards large gradients
    raw = {e["id"]: e for e in result["influence"]}
    dup = raw["duplicate"]["score_raw"]
    assert dup == pytest.approx(top["self_influence"], rel=1e-4)
    selfinf = {e["id"]: e["value"] for e in result["self_influence"]}
    above = [i for i, e in raw.items() if e["score_raw"] > dup]
    assert all(selfinf[i] > selfinf["duplicate"] for i in above)
    plain = read_result(run(request(s, "raw")))
    assert [e["score"] for e in plain["influence"]] == pytest.approx([e["score_raw"] for e in result["influence"]])


def test_self_influence_finds_the_mislabelled_case(tmp_path):
    """Every case holds a bright cube (labelled) and a faint one (background); in one case the annotator outlined the
    faint cube instead. Once the model fits the clean cases, that case keeps a large gradient."""
    def case(lo, faint, wrong=False):
        images, labels = blob_case(0, lo)
        images[0][tuple(slice(a, a + 4) for a in faint)] = 0.4
        if wrong:
            labels[:] = 0
            labels[tuple(slice(a, a + 4) for a in faint)] = 1
        return images, labels

    places = [((1, 1, 1), (7, 7, 7)), ((6, 2, 5), (1, 7, 1)), ((3, 7, 2), (7, 1, 7)), ((7, 6, 7), (1, 1, 2)),
              ((2, 5, 6), (7, 1, 1)), ((5, 1, 3), (1, 7, 7))]
    cases = [case(*p) for p in places] + [case((1, 6, 1), (6, 1, 6), wrong=True)]
    s = scenario(tmp_path, cases, [f"c{i}" for i in range(6)] + ["mislabelled"], case((6, 6, 2), (1, 1, 7)), steps=(10, 20, 30))
    result = read_result(run(request(s, "out")))
    ranked = result["self_influence"]
    assert ranked[0]["id"] == "mislabelled" and ranked[0]["value"] > 2 * ranked[1]["value"]


def normed() -> torch.nn.Module:
    """Conv → InstanceNorm → PReLU → Conv, as MONAI's UNet blocks: torch.func's batched Jacobian of a parameter
    upstream of an instance norm needs care (vmap over jacrev's own vmap fails there)."""
    return torch.nn.Sequential(torch.nn.Conv3d(2, 4, 3, padding=1), torch.nn.InstanceNorm3d(4, affine=True), torch.nn.PReLU(),
                               torch.nn.Conv3d(4, 2, 1))


@pytest.mark.parametrize("make, names", [(Tiny, ["features.weight", "head.weight"]), (normed, ["0.weight", "1.weight", "3.weight"])])
def test_vectorised_per_sample_gradients_equal_one_at_a_time_autograd(make, names):
    torch.manual_seed(1)
    net = make().eval()
    for p in net.parameters():
        p.requires_grad_(False)
    target = parse_target("1", LABELS, "softmax", 2)
    grads = Gradients(net, names, target, batch_size=4)
    rng = np.random.default_rng(0)
    cases = [blob_case(int(rng.integers(2)), tuple(int(v) for v in rng.integers(0, 8, 3))) for _ in range(3)]
    xs = torch.from_numpy(np.stack([c[0] for c in cases])) + 0.1 * torch.rand(3, 2, *SHAPE)
    refs = torch.from_numpy(np.stack([c[1].ravel() for c in cases])).float()
    valids = torch.ones_like(refs)
    valids[0, :100] = 0
    pid = torch.from_numpy(np.arange(np.prod(SHAPE)) % 8)
    fast, losses = grads.vectorised(xs, refs, valids, pid, 8)
    assert fast.shape == (3, 9, grads.size)
    for b in range(3):
        slow, slow_losses = grads.looped(net, xs[b:b + 1], lambda z: z[0].flatten(1), refs[b], valids[b], pid, 8)
        torch.testing.assert_close(fast[b], slow, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(losses[b], slow_losses)
    assert not any(p.requires_grad for p in net.parameters())


def test_projection_is_seeded_and_preserves_inner_products_on_average():
    a, b = projection_matrix(500, 64, 3), projection_matrix(500, 64, 3)
    assert torch.equal(a, b) and projection_matrix(500, 0, 3) is None and projection_matrix(100, None, 3) is None
    x = torch.randn(500)
    assert float((a @ x).norm() / x.norm()) == pytest.approx(1.0, abs=0.35)


def test_bad_inputs_say_what_to_fix(decisive, tmp_path):
    with pytest.raises(InputError, match="checkpoints"):
        run(request(decisive, "none", checkpoints=[]))
    other = tmp_path / "other.pt"
    torch.save(Tiny(in_channels=4).state_dict(), other)
    with pytest.raises(InputError, match="does not fit the model"):
        run(request(decisive, "misfit", checkpoints=[*decisive["checkpoints"], f"{other}:0.1"]))
    with pytest.raises(InputError, match="PATH:LEARNING_RATE"):
        run(request(decisive, "nolr", checkpoints=[decisive["checkpoints"][0].rpartition(":")[0]]))
    with pytest.raises(InputError, match="training"):
        run(request(decisive, "nodir", training_dir=str(tmp_path / "missing")))
    with pytest.raises(InputError, match="no module named"):
        run(request(decisive, "layer", layers=["decoder"]))
    assert not (decisive["dir"] / "misfit").exists()


def test_cases_json_listing_and_full_case_loss(decisive, tmp_path):
    train = tmp_path / "listed"
    train.mkdir()
    entries = []
    for name in ("decisive", "a1"):
        src = decisive["dir"] / "train" / name
        entries.append({"id": name, "images": [str(src / "A.nii.gz"), str(src / "B.nii.gz")], "labels": str(src / "labels.nii.gz")})
    (train / "cases.json").write_text(json.dumps(entries))
    s = {**decisive, "train": str(train)}
    result = read_result(run(request(s, "listed", train_region="full")))
    assert result["training"]["listing"] == "cases.json" and result["ranking"][0] == "decisive"
    cropped = read_result(run(request(s, "listed_crop")))   # the default loss region: the crop around the target
    crop = {e["id"]: e["score"] for e in cropped["influence"]}
    full = {e["id"]: e["score"] for e in result["influence"]}
    assert full["decisive"] == pytest.approx(crop["decisive"], rel=1e-4)  # single-window model: the crop is the whole case


def test_demo_bundle_training_cases_and_checkpoints_are_found():
    from SegXAILib.demo.run_demo import demo_models
    from SegXAILib.models import load_models
    from SegXAILib.training_data import demo_training_set, folder_checkpoints, load_checkpoint_state

    fold0 = demo_models()[0]
    record = json.loads((fold0.parent / "training.json").read_text())
    cases = demo_training_set(fold0)
    assert cases.seeds == record["folds"][0]["train_case_seeds"] and len(cases.subset(5)) == 5
    checkpoints = folder_checkpoints(fold0)
    assert len(checkpoints) == 4 and all(c.learning_rate > 0 for c in checkpoints)
    model, = load_models([fold0], ModelOptions(trust=True))
    state = load_checkpoint_state(checkpoints[-1], model.module)
    assert state.keys() == model.module.state_dict().keys()


def test_tracin_options_reach_the_command_line_and_back():
    from SegXAILib import cli
    from SegXAILib.runner import explain_argv

    request = ExplainRequest(images=["a.nii.gz", "b.nii.gz"], models=["m.pt"], out="o", targets=["WT"], method="tracin", roi_mask="r",
                             tracin=TracInOptions(training_dir="train", checkpoints=["c1.pt:0.01", "C:/x/c2.pt:0.005"],
                                                  layers=["head", "features"], projection_dim=0, train_region="full", patches=2,
                                                  max_cases=7, score="cosine", top_k=3))
    argv = explain_argv(request, python="py")
    assert argv.count("--tracin-checkpoint") == 2
    assert cli._request(cli.build_parser().parse_args(argv[3:])).to_json() == request.to_json()


def test_target_crop_centres_on_the_target_and_pads_small_cases():
    from SegXAILib.methods.tracin import patch_boxes, patch_ids, target_crop

    image = np.arange(2 * 20 * 20 * 20, dtype=np.float32).reshape(2, 20, 20, 20)
    focus = np.zeros((20, 20, 20), bool)
    focus[15:19, 2:4, 9:11] = True
    crop, valid, start = target_crop(image, focus, (8, 8, 8))
    assert list(start) == [12, 0, 5] and valid.all() and np.array_equal(crop, image[:, 12:20, 0:8, 5:13])
    small, valid, start = target_crop(image[:, :6], focus[:6], (8, 8, 8))   # no target inside: the centre; padded axis 0
    assert list(start) == [-1, 6, 6] and valid.sum() == 6 * 64 and np.array_equal(small[:, 1:7], image[:, :6, 6:14, 6:14])
    assert small[:, 0].max() == 0 and not valid[0].any()
    ids = patch_ids((8, 8, 8), 2)
    boxes = patch_boxes((8, 8, 8), 2, (12, 0, 5))
    assert ids[7, 0, 5] == 5 and boxes[5] == [[16, 20], [0, 4], [9, 13]]
