"""bench/: every benchmark's --cpu mode at its smallest sizes writes a JSON with its ratios.

The figures themselves depend on the machine; the tests check that each script runs end to end, that its
ratios are the quotient of the figures it reports, and that the JSON and table plumbing of
bench/gpu_check.py works (its full CPU run is a slow test).
"""
import json
import math

import pytest

from bench import common as bc
from bench import aspect_bench, gpu_check, infer_bench, input_bench, prepare_bench, rle_bench, train_bench


def _positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_common_helpers(tmp_path):
    import torch

    images, targets = bc.random_batch(2, 32, 3, "cpu", seed=1)
    again, _ = bc.random_batch(2, 32, 3, "cpu", seed=1)
    assert all(torch.equal(a, b) for a, b in zip(images, again))
    t = targets[0]
    assert t["masks"].shape == (3, 32, 32) and t["masks"].dtype == torch.uint8
    for box, mask in zip(t["boxes"].int().tolist(), t["masks"]):  # each mask fills its box exactly
        x1, y1, x2, y2 = box
        assert int(mask.sum()) == (x2 - x1) * (y2 - y1) > 0
    assert bc.ratio(3.0, 2.0) == 1.5 and bc.ratio(1.0, 0.0) is None and bc.ratio(None, 1.0) is None
    assert bc.table([{"a": 1.23456, "b": None}], [("a", "A"), ("b", "B")]).splitlines() == [
        "| A | B |", "|---|---|", "| 1.23 | - |"]
    assert bc.count_syncs(lambda: None, "cpu") is None
    with pytest.raises(SystemExit, match="--cpu") if not torch.cuda.is_available() else _nothing():
        bc.pick_device(False)
    assert json.loads(bc.write_json(tmp_path / "x" / "r.json", {"v": 1.0}).read_text()) == {"v": 1.0}


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_engine_step_trains_and_refuses_nan():
    import torch

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = model

        def forward(self, images, targets):
            return {"loss_a": self.lin(torch.stack(images)).pow(2).mean(), "loss_b": self.lin.bias.abs().sum()}

    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    images = [torch.ones(4), torch.full((4,), 2.0)]
    before = bc.engine_step(net, images, None, opt, None, clip_grad=1.0)
    after = bc.engine_step(net, images, None, opt, None, clip_grad=1.0)
    assert set(before) == {"loss_a", "loss_b"} and sum(after.values()) < sum(before.values())  # the step descends
    with torch.no_grad():
        model.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        bc.engine_step(net, images, None, opt, None)


def test_rle_bench_ratios():
    res = rle_bench.run([(64, 48)], repeat=1, number=1)
    r = res[0]
    assert r["shape"] == [64, 48] and r["runs"] > 0
    assert r["encode_ratio"] == pytest.approx(r["coco_encode"] / r["ours_encode"])
    assert r["decode_ratio"] == pytest.approx(r["coco_decode"] / r["ours_decode"])


def test_prepare_bench_cpu(tmp_path):
    out = tmp_path / "prepare.json"
    prepare_bench.main(["--cpu", "--counts", "2", "6", "--csv-rows", "300", "1200", "--unique", "2", "--data-side",
                        "96", "--long-side", "64", "--work-dir", str(tmp_path / "w"), "--out", str(out)])
    rep = json.loads(out.read_text())
    assert rep["mode"] == "cpu" and rep["benchmark"] == "prepare"
    for key in ("prepare_ratio", "rss_growth_images", "rss_growth_csv_rows"):
        assert _positive(rep[key]), key
    images = [r for r in rep["rows"] if r["sweep"] == "images"]
    csv_rows = [r for r in rep["rows"] if r["sweep"] == "csv_rows"]
    assert [r["images"] for r in images] == [2, 6] and [r["csv_rows"] for r in csv_rows] == [300, 1200]
    for r in images:
        assert r["ratio"] == pytest.approx(r["ours_img_s"] / r["plain_img_s"])
        assert r["ours_peak_rss_mb"] > 10 and r["plain_peak_rss_mb"] > 10  # a Python process was seen
        assert r["ours_tree_rss_mb"] >= r["ours_peak_rss_mb"] * 0.5
    assert images[1]["csv_rows"] == 3 * images[0]["csv_rows"]  # every row of every copy (2 unique images)


def test_prepare_bench_replicated_dataset_pads_the_csv(tmp_path):
    base = prepare_bench.base_dataset(tmp_path, 2, 96)
    d = prepare_bench.replicated_dataset(base, tmp_path / "set", 3, n_rows=50)
    lines = (d / "train.csv").read_text().splitlines()
    assert lines[0] == prepare_bench.HEADER and len(lines) == 51
    real = sorted(p.name for p in (d / "train").iterdir())
    assert len(real) == 3 and all(n.startswith("a") for n in real)
    ids = sorted({line.split(",", 1)[0] for line in lines[1:]})
    assert ids[:3] == real and all(i.startswith("z") for i in ids[3:])  # --limit 3 takes the real ones


def test_train_bench_cpu(tmp_path):
    out = tmp_path / "train.json"
    train_bench.main(["--cpu", "--archs", "maskrcnn", "unet", "--size", "64", "--unet-size", "64", "--instances",
                      "3", "--steps", "1", "--warmup", "0", "--channels-last", "--out", str(out)])
    rep = json.loads(out.read_text())
    assert rep["precision"] == "fp32" and rep["config"]["backbone"] == "resnet18"
    assert all(r["cl_ratio"] == pytest.approx(r["ours_cl_img_s"] / r["stock_img_s"]) for r in rep["rows"])
    for arch in ("maskrcnn", "unet"):
        assert _positive(rep[f"{arch}_train_ratio"]), rep["rows"]
    for r in rep["rows"]:
        assert r["ratio"] == pytest.approx(r["ours_img_s"] / r["stock_img_s"])
        assert r["ours_syncs_per_step"] is None  # counted on CUDA only


def test_infer_bench_cpu(tmp_path):
    out = tmp_path / "infer.json"
    infer_bench.main(["--cpu", "--archs", "maskrcnn", "unet", "--size", "64", "--unet-size", "64", "--detections",
                      "4", "--test-size", "96", "64", "--unique-images", "1", "--batch-size", "1", "--steps", "1",
                      "--warmup", "0", "--project-images", "100", "--work-dir", str(tmp_path / "w"),
                      "--channels-last", "--paste-detections", "20", "--paste-image", "192", "256", "--out", str(out)])
    rep = json.loads(out.read_text())
    assert rep["project_images"] == 100 and rep["tta_flip"] is True
    paste = rep["paste"]
    assert paste["detections"] == 20 and paste["image_hw"] == [192, 256] and rep["paste_ratio"] == paste["paste_ratio"]
    assert paste["paste_ratio"] == pytest.approx(paste["paste_stock_ms"] / paste["paste_ours_ms"])
    assert paste["paste_same_size_ratio"] == pytest.approx(paste["paste_same_size_stock_ms"]
                                                           / paste["paste_same_size_ours_ms"])
    assert paste["paste_iou_mean"] > 0.9 and paste["paste_ours_syncs"] is None  # syncs: counted on CUDA only
    assert "| mask paste, 20 masks into 512 x 512 (ms) |" in gpu_check.summary_table({"infer": rep})
    for arch in ("maskrcnn", "unet"):
        assert _positive(rep[f"{arch}_predict_ratio"]), rep["rows"]
        assert _positive(rep[f"{arch}_projected_total_s"])
    for r in rep["rows"]:
        assert r["views"] == 2 and r["input_hw"] == [64, 43]  # 96x64 shrunk to long side 64
        assert r["cl_forward_ratio"] == pytest.approx(r["ours_cl_forward_img_s"] / r["stock_img_s"])
        assert r["instances_per_image"] > 0  # the post-processing had work
        assert r["predict_ratio"] == pytest.approx(r["predict_img_s"] / r["stock_img_s"])
        assert r["projected_total_s"] == pytest.approx(r["projected_05_s"] + r["projected_06_s"])
        assert r["projected_05_s"] >= 100 / r["predict_img_s"] - 1e-6
        assert _positive(r["fusion_device_ms"]) and _positive(r["fusion_host_ms"])
        assert r["fusion_ratio"] == pytest.approx(r["fusion_host_ms"] / r["fusion_device_ms"])


def test_input_bench_cpu(tmp_path):
    out = tmp_path / "input.json"
    input_bench.main(["--cpu", "--arch", "unet", "--n-train", "4", "--data-side", "96", "--long-side", "64",
                      "--batch-size", "2", "--workers", "0", "--batches", "2", "--steps", "1", "--warmup", "1",
                      "--work-dir", str(tmp_path / "w"), "--out", str(out)])
    rep = json.loads(out.read_text())
    assert rep["images"] == 4 and rep["long_side"] == 64  # every synthetic image in the train split
    for key in ("loader_ratio", "end_to_end_ratio", "workers_needed", "sample_ms"):
        assert _positive(rep[key]), key
    assert rep["end_to_end_ratio"] == pytest.approx(rep["end_to_end_img_s"] / rep["model_img_s"])


def test_gpu_check_budget_and_table(tmp_path):
    rep = gpu_check.main(["--cpu", "--budget-s", "0", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert all(saved[s] == {"skipped": "time budget"} for s in gpu_check.SECTIONS)
    assert rep["mode"] == "cpu" and (tmp_path / "gpu_check.md").read_text().startswith("gpu_check ")
    fake = {"train": {"rows": [{"arch": "maskrcnn", "batch": 8, "size": 1024, "ours_img_s": 90.0,
                                "stock_img_s": 45.0, "ratio": 2.0}]},
            "input": {"workers": 8, "loader_img_s": 300.0, "model_img_s": 90.0, "loader_ratio": 3.33,
                      "end_to_end_img_s": 88.0, "end_to_end_ratio": 0.978}}
    table = gpu_check.summary_table(fake)
    assert "| train step maskrcnn (img/s, batch 8, 1024 px) | 90 | 45 (stock) | 2 | >= 1.5 |" in table
    assert "| 0.978 | >= 0.95 |" in table
    assert "| infer | skipped (time budget) | | | |" in gpu_check.summary_table({"infer": {"skipped": "time budget"}})


def test_gpu_check_precision_section_on_cpu():
    """The first check a GPU gets, run here on the CPU's autocast: float32 boxes, anchors and masks."""
    import torch

    rep = gpu_check.precision_check(gpu_check.configs(True)["box_precision"], torch.device("cpu"))
    assert rep["ok"] is True and rep["bf16"]["detections"] > 0
    assert rep["bf16"]["share_on_bf16_grid"] < 0.5  # torchvision's own decoding: 1.0
    assert "| bf16: boxes / anchors / masks dtype" in gpu_check.summary_table({"box_precision": rep})


@pytest.mark.slow
def test_gpu_check_amp_section_on_cpu(tmp_path):
    rep = gpu_check.main(["--cpu", "--sections", "amp", "--out", str(tmp_path)])
    amp = rep["amp"]
    assert amp["auto"]["rc"] == 0 and amp["off"]["rc"] == 0 and amp["auto"]["amp"] == "off"  # auto: fp32 on CPU
    assert "| 03 short epoch --amp auto (off): val AP75 / Kaggle, epoch s |" in gpu_check.summary_table(rep)


@pytest.mark.slow
def test_gpu_check_cpu_sections(tmp_path):
    gpu_check.main(["--cpu", "--sections", "train", "infer", "input", "--out", str(tmp_path)])
    rep = json.loads((tmp_path / "gpu_check.json").read_text())
    assert all("error" not in rep[s] for s in ("train", "infer", "input")), rep
    assert _positive(rep["train"]["maskrcnn_train_ratio"]) and _positive(rep["input"]["end_to_end_ratio"])
    assert _positive(rep["infer"]["deepmac_projected_total_s"])


def test_aspect_bench_sizes_padding_and_report(tmp_path):
    import torch
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    # the resize is torchvision's (floored sizes), checked on small images
    t = GeneralizedRCNNTransform(80, 100, [0.0] * 3, [1.0] * 3).eval()
    for h, w in ((57, 40), (40, 57), (64, 64), (300, 90)):
        out = t([torch.zeros(3, h, w)])[0].image_sizes[0]
        assert tuple(out) == aspect_bench.detector_size(h, w, 80, 100), (h, w)
    # padded to the batch's max height and width, each rounded up to 32
    real, padded = aspect_bench.padded_pixels([[0, 1], [2]], [(64, 40), (40, 64), (33, 32)])
    assert real == 2 * 64 * 40 + 33 * 32 and padded == 2 * 64 * 64 + 64 * 32
    assert aspect_bench.synthetic_sizes(3) == aspect_bench.synthetic_sizes(3)  # the generator's own sizes
    if (aspect_bench.REAL / "imaterialist2019_train").is_dir():  # ../shared/data: 10 train JPEGs + the test one
        real = aspect_bench.real_sizes()
        assert len(real) == 11 and (5214, 3676) in real and (3008, 2000) in real
    out = tmp_path / "aspect.json"
    rep = aspect_bench.main(["--images", "48", "--epochs", "1", "--batch-sizes", "4", "--real-dir",
                             str(tmp_path / "none"), "--out", str(out)])
    assert json.loads(out.read_text())["rows"] == rep["rows"] and rep["real_sizes"] is None
    assert [(r["source"], r["scale_range"]) for r in rep["rows"]] == [("synthetic", "none"), ("synthetic", "0.6-1")]
    for r in rep["rows"]:
        assert 0 <= r["pad_grouped"] < 1 and 0 <= r["pad_plain"] < 1
        assert r["pad_ratio"] == pytest.approx(r["pad_plain"] / r["pad_grouped"])
    assert rep["rows"][0]["pad_ratio"] > 1  # grouping pads less
