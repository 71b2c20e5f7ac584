"""lib/tta.py: prediction rows, TTA views mapped back and fused on the device, the image loader, bf16."""
import numpy as np
import pytest
import torch
from torch import nn

from lib import tta as ltta
from lib import models as lmodels
from lib import predict as lpredict
from lib import prediction_table as lpred


class FakeModel(nn.Module):
    """Returns fixed instances at its input size: rectangles given as fractions (x0, y0, x1, y1) of the image."""

    def __init__(self, rects, scores, labels):
        super().__init__()
        self.rects, self.scores, self.labels = rects, scores, labels
        self.calls = []

    def forward(self, images):
        out = []
        for im in images:
            h, w = im.shape[-2:]
            self.calls.append((h, w))
            masks = torch.zeros(len(self.rects), 1, h, w)
            boxes = []
            for k, (a, b, c, d) in enumerate(self.rects):
                x0, y0, x1, y1 = round(a * w), round(b * h), round(c * w), round(d * h)
                masks[k, 0, y0:y1, x0:x1] = 0.9
                boxes.append([x0, y0, x1, y1])
            out.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                        "labels": torch.tensor(self.labels, dtype=torch.int64),
                        "scores": torch.tensor(self.scores, dtype=torch.float32), "masks": masks})
        return out


def _image(h=60, w=80):
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(0))


# --------------------------------------------------------------------------------------------- table format
def test_result_rows_round_trip(tmp_path):
    q = np.zeros((2, 32, 32), np.uint8)
    q[0, 4:10, 6:20] = 200
    q[0, 5, 7] = 17
    q[1, 30:, 31] = 255
    res = {"masks": q, "categories": np.array([6, 31]), "scores": np.array([0.9, 0.4], np.float32),
           "boxes": np.array([[12, 8, 40, 20], [62, 60, 64, 64]], np.float32),
           "attr_scores": np.array([[0.1] * 92, [0.7] * 92], np.float32)}
    rows = ltta.result_rows("a.jpg", "m", res, (64, 64))
    path = tmp_path / "p.parquet"
    lpred.make_table(rows).to_parquet(path, index=False)
    t = lpred.read_table(path)
    assert list(t["category"]) == [6, 31] and list(t["model"]) == ["m", "m"]
    assert (t["mask_height"] == 32).all() and (t["orig_width"] == 64).all()
    np.testing.assert_allclose(t[["x1", "y1", "x2", "y2"]].to_numpy(), res["boxes"])
    for k, r in enumerate(t.itertuples(index=False)):
        np.testing.assert_array_equal(np.rint(lpred.decode_prob(r) * 255).astype(np.uint8), q[k])
    np.testing.assert_allclose(t["attr_scores"].iloc[1], [0.7] * 92, rtol=1e-6)
    assert (t["mask_x0"].iloc[0], t["mask_y0"].iloc[0]) == (6, 4)
    for m in (q[0], q[1], np.zeros((5, 5), np.uint8)):  # the uint8 path stores what the float path stores
        assert lpred.encode_quantized(m) == lpred.encode_prob(m / 255.0)


def test_result_rows_without_attributes():
    res = {"masks": np.zeros((1, 8, 8), np.uint8), "categories": np.array([3]), "scores": np.array([0.5]),
           "boxes": np.zeros((1, 4), np.float32), "attr_scores": None}
    (row,) = ltta.result_rows("a.jpg", "m", res, (8, 8))
    assert row["attr_scores"] is None and (row["mask_x0"], row["mask_y0"]) == (0, 0)


# --------------------------------------------------------------------------------------------- TTA
def test_flip_tta_of_a_symmetric_model_equals_no_tta():
    model = FakeModel([(0.25, 0.2, 0.75, 0.8)], [0.8], [7])  # centred: its mirror image is itself
    img = _image()
    plain = ltta.predict_batch(model, [img], [(60, 80)], ltta.tta_views([1.0], False), mask_size=40)[0]
    tta = ltta.predict_batch(model, [img], [(60, 80)], ltta.tta_views([1.0], True), mask_size=40)[0]
    assert len(model.calls) == 3  # one plain view, then plain + flipped
    np.testing.assert_array_equal(tta["masks"], plain["masks"])
    np.testing.assert_allclose(tta["scores"], plain["scores"], rtol=1e-6)
    np.testing.assert_array_equal(tta["categories"], [6])
    assert plain["masks"].shape == (1, 40, 40) and plain["masks"].max() == round(0.9 * 255)
    np.testing.assert_allclose(plain["boxes"], [[20, 12, 60, 48]])


def _random_views(rng, k, hw, n_attr=None):
    """k TTA views of one image as _view_result leaves them on the device: uint8 maps (blobs, some
    near-duplicates across views)."""
    base = []
    for _ in range(6):
        y, x = rng.integers(0, hw[0] - 6), rng.integers(0, hw[1] - 6)
        m = np.zeros(hw, np.float32)
        m[y:y + rng.integers(3, 12), x:x + rng.integers(3, 12)] = rng.uniform(0.3, 1.0)
        base.append((m, int(rng.integers(0, 3))))
    views = []
    for v in range(k):
        pick = rng.permutation(len(base))[:rng.integers(0, len(base) + 1)]
        maps = [np.clip(base[i][0] + rng.normal(0, 0.1, hw).astype(np.float32) * (base[i][0] > 0), 0, 1)
                for i in pick]
        scores = np.sort(rng.uniform(0.05, 1, len(pick)).astype(np.float32))[::-1].copy()
        attrs = rng.random((len(pick), n_attr)).astype(np.float32) if n_attr and v != 1 else None
        q = np.rint(np.stack(maps) * 255).astype(np.uint8) if maps else np.zeros((0, *hw), np.uint8)
        views.append({"masks": torch.from_numpy(q),
                      "categories": np.array([base[i][1] for i in pick], np.int64), "scores": scores,
                      "boxes": np.zeros((len(pick), 4), np.float32), "attr_scores": attrs})
    return views


@pytest.mark.parametrize("seed", range(6))
def test_tta_fusion_on_the_device_matches_fuse_instances(seed):
    from lib.fusion import fuse_instances

    rng = np.random.default_rng(seed)
    hw = (24, 32)
    views = _random_views(rng, 3, hw, n_attr=4 if seed % 2 else None)
    got = ltta._fuse_views(views, (48, 96), hw, iou_thr=0.4, score_floor=0.1)
    ref = fuse_instances([{**v, "masks": v["masks"].numpy() / 255.0} for v in views], iou_thr=0.4)
    keep = ref["scores"] >= 0.1
    np.testing.assert_array_equal(got["categories"], ref["categories"][keep])
    np.testing.assert_allclose(got["scores"], ref["scores"][keep], rtol=1e-6)
    want = np.clip(np.rint(ref["masks"][keep] * 255), 0, 255)
    assert got["masks"].dtype == np.uint8 and got["masks"].shape == want.shape
    assert np.abs(got["masks"].astype(int) - want).max(initial=0) <= 1
    np.testing.assert_allclose(got["boxes"], ref["boxes"][keep] * np.array([3, 2, 3, 2], np.float32))
    if ref["attr_scores"] is None:
        assert got["attr_scores"] is None
    else:
        np.testing.assert_allclose(got["attr_scores"], ref["attr_scores"][keep], rtol=1e-5)
    if seed == 0:
        assert len(got["scores"]) and len(got["scores"]) < sum(len(v["scores"]) for v in views)  # some fused


def test_iou_within_categories_both_ways_agree_with_mask_iou():
    from lib.kaggle_metric import mask_iou

    rng = np.random.default_rng(0)
    masks = torch.from_numpy(rng.random((9, 20, 30)) < rng.random((9, 1, 1)))
    masks[4] = False  # an empty mask: IoU 0 with everything, itself included
    cats = np.array([0, 1, 0, 2, 0, 1, 1, 2, 0])
    ref = mask_iou(masks.numpy(), masks.numpy()) * (cats[:, None] == cats[None, :])
    for by_matmul in (False, True):  # True is what CUDA runs
        got = ltta._iou_within_categories(masks, cats, by_matmul=by_matmul)
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=0)
    assert ref[0, 2] > 0 and ref[0, 1] == 0 and ref[4, 4] == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tta_fusion_on_cuda_matches_the_cpu():
    views = _random_views(np.random.default_rng(0), 3, (24, 32), n_attr=4)
    cpu = ltta._fuse_views(views, (48, 96), (24, 32), iou_thr=0.4, score_floor=0.1)
    gpu = ltta._fuse_views([{**v, "masks": v["masks"].cuda()} for v in views], (48, 96), (24, 32),
                           iou_thr=0.4, score_floor=0.1)
    np.testing.assert_array_equal(gpu["categories"], cpu["categories"])
    assert np.abs(gpu["masks"].astype(int) - cpu["masks"]).max(initial=0) <= 1
    np.testing.assert_allclose(gpu["boxes"], cpu["boxes"])


def test_tta_fusion_of_empty_views():
    empty = {"masks": torch.zeros((0, 8, 8), dtype=torch.uint8), "categories": np.zeros(0, np.int64),
             "scores": np.zeros(0, np.float32), "boxes": np.zeros((0, 4), np.float32), "attr_scores": None}
    got = ltta._fuse_views([empty, empty], (16, 16), (8, 8), 0.5, 0.05)
    assert got["masks"].shape == (0, 8, 8) and got["boxes"].shape == (0, 4) and got["attr_scores"] is None


def test_flip_tta_maps_the_flipped_view_back():
    # A model that always marks the left quarter: on the mirrored image that is the right quarter of the original.
    model = FakeModel([(0.0, 0.0, 0.25, 1.0)], [0.6], [1])
    res = ltta.predict_batch(model, [_image(40, 80)], [(40, 80)], ltta.tta_views([1.0], True),
                             mask_size=0, score_floor=0.0)[0]
    assert res["masks"].shape == (2, 40, 80)
    np.testing.assert_allclose(res["scores"], [0.3, 0.3], rtol=1e-6)  # each found by one of two views
    fg = res["masks"] > 0
    cols = sorted((np.flatnonzero(m.any(0))[0], np.flatnonzero(m.any(0))[-1]) for m in fg)
    assert cols == [(0, 19), (60, 79)]
    boxes = sorted(res["boxes"].tolist())
    np.testing.assert_allclose(boxes, [[0, 0, 20, 40], [60, 0, 80, 40]])


def test_flipped_single_view_boxes_and_original_scale():
    model = FakeModel([(0.0, 0.5, 0.25, 1.0)], [0.9], [2])
    # the image reached the model shrunk to half size: boxes come back in original pixels
    res = ltta.predict_batch(model, [_image(30, 40)], [(60, 80)], [(1.0, True)], mask_size=0)[0]
    np.testing.assert_allclose(res["boxes"], [[60, 30, 80, 60]])
    fg = res["masks"][0] >= 128  # bilinear upsampling blurs the edge by one pixel
    assert fg.shape == (60, 80) and fg[30:, 60:].all() and not fg[:, :60].any() and not fg[:30].any()


def test_score_floor_and_order():
    model = FakeModel([(0, 0, 0.5, 0.5), (0.5, 0.5, 1, 1), (0, 0.5, 0.5, 1)], [0.3, 0.04, 0.7], [1, 2, 3])
    res = ltta.predict_batch(model, [_image()], [(60, 80)], mask_size=16, score_floor=0.05)[0]
    np.testing.assert_allclose(res["scores"], [0.7, 0.3], rtol=1e-6)
    np.testing.assert_array_equal(res["categories"], [2, 0])


class _Transform:
    def __init__(self):
        self.min_size, self.max_size = (100,), 200


def test_scale_tta_scales_the_model_transform_and_restores_it():
    model = FakeModel([(0.25, 0.25, 0.75, 0.75)], [0.9], [1])
    model.transform = _Transform()
    seen = []
    orig_forward = model.forward

    def spy(images):
        seen.append((model.transform.min_size, model.transform.max_size))
        return orig_forward(images)

    model.forward = spy
    res = ltta.predict_batch(model, [_image()], [(60, 80)], ltta.tta_views([0.5, 1.0, 1.5]), mask_size=32)
    assert seen == [((50,), 100), ((100,), 200), ((150,), 300)]
    assert (model.transform.min_size, model.transform.max_size) == ((100,), 200)
    assert len(res[0]["scores"]) == 1 and abs(res[0]["scores"][0] - 0.9) < 1e-6


def test_tta_views():
    assert ltta.tta_views([1.0, 0.8], True) == [(1.0, False), (1.0, True), (0.8, False), (0.8, True)]
    with pytest.raises(ValueError):
        ltta.tta_views([0.0])


class OracleModel(nn.Module):
    """Returns the ground-truth instances of each image it is given (in call order), at its input size."""

    def __init__(self, gts):
        super().__init__()
        self.gts = list(gts)

    def forward(self, images):
        out = []
        for im in images:
            masks, cats = self.gts.pop(0)
            h, w = im.shape[-2:]
            m = torch.nn.functional.interpolate(torch.from_numpy(masks).float()[:, None], size=(h, w))
            boxes = torch.tensor([[0, 0, w, h]] * len(cats), dtype=torch.float32).reshape(-1, 4)
            out.append({"boxes": boxes, "labels": torch.tensor(cats, dtype=torch.int64) + 1,
                        "scores": torch.linspace(0.9, 0.5, len(cats)), "masks": m})
        return out


@pytest.mark.parametrize("long_side, mask_size, expect", [(0, 0, 0.999), (0, 512, 0.95), (128, 512, 0.4)])
def test_predicted_masks_land_in_the_original_frame(synthetic_data_dir, long_side, mask_size, expect):
    """An oracle model run through the loader and 05's mapping scores ~1 against the GT CSV.

    Without shrinking the images it is exact at the original size (0.967 at 512x512: resampling); shrunk
    to a long side of 128 (from 175-255 px) the thin parts suffer (0.46), but the frame is still right.
    """
    from lib import scoring as lscoring

    frame = lpredict.images_from_data_dir(synthetic_data_dir, progress=False)
    gt_csv = synthetic_data_dir / "test_ground_truth.csv"
    gt = lscoring.load_ground_truth(gt_csv, mask_size=None, progress=False)
    model = OracleModel([(gt[i][0], np.array(gt[i][1])) for i in frame["image_id"]])
    loader = ltta.make_image_loader(frame["path"], long_side=long_side, batch_size=2, workers=0)
    rows = []
    for positions, imgs in loader:
        orig = [(int(frame.at[p, "orig_height"]), int(frame.at[p, "orig_width"])) for p in positions]
        if long_side:
            assert all(max(im.shape[-2:]) == long_side for im in imgs)  # really shrunk
        else:
            assert [tuple(im.shape[-2:]) for im in imgs] == orig
        res = ltta.predict_batch(model, [im.float() / 255 for im in imgs], orig, mask_size=mask_size,
                                 score_floor=0)
        for p, r, o in zip(positions, res, orig):
            rows += ltta.result_rows(frame.at[p, "image_id"], "oracle", r, o)
    table = lpred.make_table(rows)
    s = lscoring.score_table(table, gt_csv, {"score_thresh": 0.0, "nms_iou": 1.0, "overlap": "none", "min_area": 0},
                         mask_size=mask_size or None, per_class=False, coco=False, progress=False)
    assert s["num_images"] == 3 and s["kaggle"] > expect, s["kaggle"]


@pytest.mark.parametrize("arch", ["maskrcnn", "deepmac", "unet"])
def test_bf16_autocast_prediction_matches_fp32(arch):
    """The bf16 autocast path 05 takes on CUDA, run on the CPU (same casts): a valid result close to fp32."""
    overrides = {"unet": dict(encoder="resnet18", min_size=96, max_size=96, decoder_channels=[32, 16, 16, 8, 8]),
                 "maskrcnn": dict(backbone="resnet18", min_size=96, max_size=96, box_score_thresh=0.0,
                                  box_detections_per_img=5, attr_head=True),
                 "deepmac": dict(backbone="resnet18", min_size=96, max_size=96, box_score_thresh=0.0,
                                 box_detections_per_img=5, mask_head_width=16, mask_head_depth=2,
                                 mask_head_stacks=1, mask_roi_size=16)}[arch]
    torch.manual_seed(0)
    model = lmodels.build_model(lmodels.default_config(arch, **overrides)).eval()
    images = [torch.rand(3, 90, 120)]
    views = ltta.tta_views((1.0,), flip=True)
    with torch.no_grad():
        ref = ltta.predict_batch(model, images, [(180, 240)], views, mask_size=64, score_floor=0.0)[0]
        got = ltta.predict_batch(model, images, [(180, 240)], views, mask_size=64, score_floor=0.0,
                                 dtype=torch.bfloat16)[0]
    n = len(got["scores"])
    assert n > 0 and got["masks"].shape == (n, 64, 64) and got["masks"].dtype == np.uint8
    assert got["scores"].dtype == np.float32 and np.isfinite(got["scores"]).all()
    assert np.isfinite(got["boxes"]).all() and (got["boxes"][:, 2:] <= [240, 180]).all()
    if arch == "maskrcnn":
        assert got["attr_scores"].shape == (n, 92) and got["attr_scores"].dtype == np.float32
    # bf16 rounds activations (~3 significant digits): the best detection's score stays close to fp32's
    assert abs(float(got["scores"][0]) - float(ref["scores"][0])) < 0.05
