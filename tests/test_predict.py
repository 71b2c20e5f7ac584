"""lib/predict.py and 05_predict.py: table round trip, TTA mapping and fusion, resume, a real test image."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from conftest import REAL_TEST, REPO
from lib import checkpoint as lcheckpoint
from lib import models as lmodels
from lib import predict as lpredict
from lib import prediction_table as lpred


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name.replace(".py", "").lstrip("0123456789_"), REPO / name)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


PREDICT = _load_script("05_predict.py")


def _args(**kw):
    argv = []
    for k, v in kw.items():
        flag = "--" + k.replace("_", "-")
        if v is True:
            argv.append(flag)
        elif isinstance(v, (list, tuple)):
            argv += [flag, *map(str, v)]
        else:
            argv += [flag, str(v)]
    return PREDICT.get_args_parser().parse_args(argv)


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
    rows = lpredict.result_rows("a.jpg", "m", res, (64, 64))
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
    (row,) = lpredict.result_rows("a.jpg", "m", res, (8, 8))
    assert row["attr_scores"] is None and (row["mask_x0"], row["mask_y0"]) == (0, 0)


# --------------------------------------------------------------------------------------------- TTA
def test_flip_tta_of_a_symmetric_model_equals_no_tta():
    model = FakeModel([(0.25, 0.2, 0.75, 0.8)], [0.8], [7])  # centred: its mirror image is itself
    img = _image()
    plain = lpredict.predict_batch(model, [img], [(60, 80)], lpredict.tta_views([1.0], False), mask_size=40)[0]
    tta = lpredict.predict_batch(model, [img], [(60, 80)], lpredict.tta_views([1.0], True), mask_size=40)[0]
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
    got = lpredict._fuse_views(views, (48, 96), hw, iou_thr=0.4, score_floor=0.1)
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
    from lib.metric import mask_iou

    rng = np.random.default_rng(0)
    masks = torch.from_numpy(rng.random((9, 20, 30)) < rng.random((9, 1, 1)))
    masks[4] = False  # an empty mask: IoU 0 with everything, itself included
    cats = np.array([0, 1, 0, 2, 0, 1, 1, 2, 0])
    ref = mask_iou(masks.numpy(), masks.numpy()) * (cats[:, None] == cats[None, :])
    for by_matmul in (False, True):  # True is what CUDA runs
        got = lpredict._iou_within_categories(masks, cats, by_matmul=by_matmul)
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=0)
    assert ref[0, 2] > 0 and ref[0, 1] == 0 and ref[4, 4] == 0


def test_boxes_of_fused_maps_follow_masks_to_boxes():
    """The on-device boxes of fused maps = lib.fusion.masks_to_boxes: the pixels >= 0.5, else the nonzero
    ones (however faint, subnormal floats included), else zeros."""
    from lib.fusion import masks_to_boxes

    rng = np.random.default_rng(1)
    maps = (rng.random((6, 12, 16)) * (rng.random((6, 12, 16)) < 0.2)).astype(np.float32)
    maps[1] = 0.0
    maps[1, 3:5, 7:9] = 0.3  # nothing >= 0.5: the box of the nonzero pixels
    maps[2] = 0.0
    maps[2, 6, 2] = np.float32(1e-40)  # subnormal, still nonzero
    maps[3] = 0.0  # all zero
    maps[4, 0, 0] = 0.5  # exactly the threshold
    got = lpredict._boxes_of_maps(torch.from_numpy(maps))
    np.testing.assert_array_equal(got, masks_to_boxes(maps))
    assert got.dtype == np.float32 and got[2].tolist() == [2, 6, 3, 7] and got[3].tolist() == [0, 0, 0, 0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tta_fusion_on_cuda_matches_the_cpu():
    views = _random_views(np.random.default_rng(0), 3, (24, 32), n_attr=4)
    cpu = lpredict._fuse_views(views, (48, 96), (24, 32), iou_thr=0.4, score_floor=0.1)
    gpu = lpredict._fuse_views([{**v, "masks": v["masks"].cuda()} for v in views], (48, 96), (24, 32),
                               iou_thr=0.4, score_floor=0.1)
    np.testing.assert_array_equal(gpu["categories"], cpu["categories"])
    assert np.abs(gpu["masks"].astype(int) - cpu["masks"]).max(initial=0) <= 1
    np.testing.assert_allclose(gpu["boxes"], cpu["boxes"])


def test_tta_fusion_of_empty_views():
    empty = {"masks": torch.zeros((0, 8, 8), dtype=torch.uint8), "categories": np.zeros(0, np.int64),
             "scores": np.zeros(0, np.float32), "boxes": np.zeros((0, 4), np.float32), "attr_scores": None}
    got = lpredict._fuse_views([empty, empty], (16, 16), (8, 8), 0.5, 0.05)
    assert got["masks"].shape == (0, 8, 8) and got["boxes"].shape == (0, 4) and got["attr_scores"] is None


def test_flip_tta_maps_the_flipped_view_back():
    # A model that always marks the left quarter: on the mirrored image that is the right quarter of the original.
    model = FakeModel([(0.0, 0.0, 0.25, 1.0)], [0.6], [1])
    res = lpredict.predict_batch(model, [_image(40, 80)], [(40, 80)], lpredict.tta_views([1.0], True),
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
    res = lpredict.predict_batch(model, [_image(30, 40)], [(60, 80)], [(1.0, True)], mask_size=0)[0]
    np.testing.assert_allclose(res["boxes"], [[60, 30, 80, 60]])
    fg = res["masks"][0] >= 128  # bilinear upsampling blurs the edge by one pixel
    assert fg.shape == (60, 80) and fg[30:, 60:].all() and not fg[:, :60].any() and not fg[:30].any()


def test_score_floor_and_order():
    model = FakeModel([(0, 0, 0.5, 0.5), (0.5, 0.5, 1, 1), (0, 0.5, 0.5, 1)], [0.3, 0.04, 0.7], [1, 2, 3])
    res = lpredict.predict_batch(model, [_image()], [(60, 80)], mask_size=16, score_floor=0.05)[0]
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
    res = lpredict.predict_batch(model, [_image()], [(60, 80)], lpredict.tta_views([0.5, 1.0, 1.5]), mask_size=32)
    assert seen == [((50,), 100), ((100,), 200), ((150,), 300)]
    assert (model.transform.min_size, model.transform.max_size) == ((100,), 200)
    assert len(res[0]["scores"]) == 1 and abs(res[0]["scores"][0] - 0.9) < 1e-6


def test_tta_views():
    assert lpredict.tta_views([1.0, 0.8], True) == [(1.0, False), (1.0, True), (0.8, False), (0.8, True)]
    with pytest.raises(ValueError):
        lpredict.tta_views([0.0])


def test_model_names(tmp_path):
    (tmp_path / "unet").mkdir()
    assert lpredict.model_names([tmp_path / "unet", tmp_path / "maskrcnn" / "best.pth"]) == ["unet", "maskrcnn"]
    with pytest.raises(ValueError, match="twice"):
        lpredict.model_names([tmp_path / "a" / "best.pth", tmp_path / "a" / "checkpoint.pth"])
    with pytest.raises(ValueError, match="2 checkpoints"):
        lpredict.model_names(["a", "b"], ["x"])


def test_resolve_checkpoint(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    with pytest.raises(FileNotFoundError, match="no best.pth"):
        lpredict.resolve_checkpoint(d)
    (d / "checkpoint.pth").write_bytes(b"x")
    assert lpredict.resolve_checkpoint(d) == d / "checkpoint.pth"
    (d / "best.pth").write_bytes(b"x")
    assert lpredict.resolve_checkpoint(d) == d / "best.pth"


# --------------------------------------------------------------------------------------------- 05 end to end
def _save_untrained(path: Path, arch: str, **overrides) -> Path:
    torch.manual_seed(0)
    cfg = lmodels.default_config(arch, **overrides)
    model = lmodels.build_model(cfg)
    lcheckpoint.save_checkpoint(path, {"format": lcheckpoint.CHECKPOINT_FORMAT, "stage": "test", "arch": arch, "config": cfg,
                                  "model": model.state_dict(), "epoch": 0, "global_step": 0,
                                  "labels": [str(i) for i in range(46)]})
    return path


@pytest.fixture(scope="module")
def tiny_maskrcnn(tmp_path_factory) -> Path:
    """An untrained light Mask R-CNN that keeps every detection (so the tables are not empty)."""
    return _save_untrained(tmp_path_factory.mktemp("ckpt") / "maskrcnn" / "best.pth", "maskrcnn",
                           backbone="resnet18", min_size=128, max_size=128, box_score_thresh=0.0,
                           box_detections_per_img=8, rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=50)


def test_05_real_test_image_to_valid_submission(tmp_path, tiny_maskrcnn):
    from lib import submission as lsub

    real = sorted(REAL_TEST.glob("*.jpg")) if REAL_TEST.is_dir() else []
    if not real:
        pytest.skip(f"real test image not found in {REAL_TEST} (../shared/data beside the repo)")
    data = tmp_path / "data"
    (data / "test").mkdir(parents=True)
    (data / "test" / real[0].name).symlink_to(real[0])
    out = tmp_path / "pred"
    PREDICT.main(_args(checkpoints=[tiny_maskrcnn], data_dir=data, out_dir=out, workers=0, batch_size=1,
                       score_floor=0.0, no_progress=True))
    table = lpred.read_table(out / "predictions.parquet")
    images = pd.read_parquet(out / "images.parquet")
    h, w = 3008, 2000
    assert images.to_dict("records") == [{"image_id": real[0].name, "orig_height": h, "orig_width": w}]
    assert len(table) > 0 and set(table["model"]) == {"maskrcnn"}
    assert (table["mask_height"] == 512).all() and (table["mask_width"] == 512).all()
    assert (table["x2"] <= w + 1e-3).all() and (table["y2"] <= h + 1e-3).all() and (table["x1"] >= 0).all()
    assert table["score"].is_monotonic_decreasing
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "done" and meta["timing"]["images_per_s"] > 0
    assert meta["input_long_side"] == 128 and meta["models"][0]["arch"] == "maskrcnn"
    assert not (out / "shards").exists()

    sub = lsub.build_submission(table, images, {"score_thresh": 0.0, "mask_thresh": 0.3}, progress=False)
    assert set(sub["ImageId"]) == {real[0].name} and (sub["ClassId"] != lsub.PLACEHOLDER[1]).any()
    assert lsub.validate_submission(sub, [real[0].name], 512) == []


def _run(out, ckpt, data, **kw):
    return PREDICT.main(_args(checkpoints=[ckpt], data_dir=data, out_dir=out, workers=0, no_progress=True,
                              score_floor=0.0, **kw))


def test_05_resume_after_interruption_gives_the_clean_result(tmp_path, tiny_maskrcnn, synthetic_data_dir,
                                                             monkeypatch):
    clean = tmp_path / "clean"
    _run(clean, tiny_maskrcnn, synthetic_data_dir, batch_size=1, mask_size=64)
    ref = lpred.read_table(clean / "predictions.parquet")
    n_images = len(pd.read_parquet(clean / "images.parquet"))
    assert n_images == 3 and len(ref) > 0

    out = tmp_path / "resumed"
    real_write = lpredict.ShardStore.write
    calls = []

    def crashing_write(self, rank, index, rows, images):
        calls.append(index)
        if len(calls) == 2:  # the second shard: its rows are written, then the process "dies"
            with lpredict.lio.atomic_path(self.dir / f"part-{rank}-{index:05d}.parquet", suffix=".parquet") as t:
                lpred.make_table(rows).to_parquet(t, index=False)
            raise KeyboardInterrupt("simulated interruption")
        return real_write(self, rank, index, rows, images)

    monkeypatch.setattr(lpredict.ShardStore, "write", crashing_write)
    with pytest.raises(KeyboardInterrupt):
        _run(out, tiny_maskrcnn, synthetic_data_dir, batch_size=1, mask_size=64, shard_size=1)
    monkeypatch.setattr(lpredict.ShardStore, "write", real_write)
    shards = sorted(p.name for p in (out / "shards").iterdir())
    assert shards == ["config.json", "images-0-00000.parquet", "part-0-00000.parquet", "part-0-00001.parquet"]
    assert not (out / "predictions.parquet").exists()

    # another configuration must not be mixed into these shards
    with pytest.raises(ValueError, match="another prediction configuration.*mask_size"):
        _run(out, tiny_maskrcnn, synthetic_data_dir, batch_size=1, mask_size=32, shard_size=1)

    seen = []
    real_batch = lpredict.predict_batch
    monkeypatch.setattr(lpredict, "predict_batch", lambda m, imgs, *a, **k: seen.append(len(imgs)) or
                        real_batch(m, imgs, *a, **k))
    _run(out, tiny_maskrcnn, synthetic_data_dir, batch_size=1, mask_size=64, shard_size=1)
    assert sum(seen) == 2  # only the images that were not done
    got = lpred.read_table(out / "predictions.parquet")
    pd.testing.assert_frame_equal(got, ref)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "images.parquet"), pd.read_parquet(clean / "images.parquet"))
    assert not (out / "shards").exists()

    # a finished run is not redone; --restart predicts again
    seen.clear()
    _run(out, tiny_maskrcnn, synthetic_data_dir, batch_size=1, mask_size=64, shard_size=1)
    assert seen == []
    _run(out, tiny_maskrcnn, synthetic_data_dir, batch_size=1, mask_size=64, restart=True)
    assert sum(seen) == 3
    pd.testing.assert_frame_equal(lpred.read_table(out / "predictions.parquet"), ref)


def test_05_stop_after_then_continue(tmp_path, tiny_maskrcnn, synthetic_data_dir):
    out = tmp_path / "p"
    _run(out, tiny_maskrcnn, synthetic_data_dir, batch_size=2, shard_size=2, stop_after=2, mask_size=32)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "partial" and meta["images_left"] == 1
    _run(out, tiny_maskrcnn, synthetic_data_dir, batch_size=2, shard_size=2, mask_size=32, keep_shards=True)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "done" and len(pd.read_parquet(out / "images.parquet")) == 3
    assert (out / "shards" / "images-0-00001.parquet").exists()


def test_05_on_the_cache_val_split_writes_gt(tmp_path, tiny_maskrcnn, prepared_set):
    from lib import prepared as lprepared
    from lib import submission as lsub

    out = tmp_path / "val"
    PREDICT.main(_args(checkpoints=[tiny_maskrcnn], prepared_dir=prepared_set, split="val", out_dir=out,
                       workers=1, batch_size=2, names=["mr"], score_floor=0.0, mask_size=0, no_progress=True,
                       channels_last=True))
    assert json.loads((out / "meta.json").read_text())["args"]["channels_last"] is True
    val = lprepared.load_index(prepared_set, "val")
    images = pd.read_parquet(out / "images.parquet")
    assert list(images["image_id"]) == list(val["image_id"])
    assert list(images["orig_height"]) == list(val["height"])
    table = lpred.read_table(out / "predictions.parquet")
    assert set(table["model"]) == {"mr"}
    assert ((table["mask_height"] == table["orig_height"]) & (table["mask_width"] == table["orig_width"])).all()
    gt = pd.read_csv(out / "gt.csv")
    assert list(gt.columns) == ["ImageId", "EncodedPixels", "Height", "Width", "ClassId"]
    assert len(gt) == int(val["num_instances"].sum())
    s = lsub.score_table(table, out / "gt.csv", {"score_thresh": 0.0}, mask_size=None, images=images,
                         progress=False)
    assert s["num_images"] == len(val) and 0.0 <= s["kaggle"] <= 1.0


@pytest.mark.slow
def test_05_torchrun_two_ranks_equals_one_process(tmp_path, tiny_maskrcnn, synthetic_data_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    flags = ["--checkpoints", str(tiny_maskrcnn), "--data-dir", str(synthetic_data_dir), "--workers", "0",
             "--batch-size", "1", "--mask-size", "32", "--score-floor", "0", "--shard-size", "1", "--device", "cpu",
             "--no-progress", "--keep-shards"]
    one, two = tmp_path / "one", tmp_path / "two"
    for launcher, out in (([], one), (["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"], two)):
        r = subprocess.run([sys.executable, *launcher, str(REPO / "05_predict.py"), *flags, "--out-dir", str(out)],
                           env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
    ranks = {p.name.split("-")[1] for p in (two / "shards").glob("images-*.parquet")}
    assert ranks == {"0", "1"}
    pd.testing.assert_frame_equal(lpred.read_table(two / "predictions.parquet"),
                                  lpred.read_table(one / "predictions.parquet"))
    assert json.loads((two / "meta.json").read_text())["world_size"] == 2
    shutil.rmtree(two / "shards")


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
    from lib import submission as lsub

    frame = lpredict.images_from_data_dir(synthetic_data_dir, progress=False)
    gt_csv = synthetic_data_dir / "test_ground_truth.csv"
    gt = lsub.load_ground_truth(gt_csv, mask_size=None, progress=False)
    model = OracleModel([(gt[i][0], np.array(gt[i][1])) for i in frame["image_id"]])
    loader = lpredict.make_image_loader(frame["path"], long_side=long_side, batch_size=2, workers=0)
    rows = []
    for positions, imgs in loader:
        orig = [(int(frame.at[p, "orig_height"]), int(frame.at[p, "orig_width"])) for p in positions]
        if long_side:
            assert all(max(im.shape[-2:]) == long_side for im in imgs)  # really shrunk
        else:
            assert [tuple(im.shape[-2:]) for im in imgs] == orig
        res = lpredict.predict_batch(model, [im.float() / 255 for im in imgs], orig, mask_size=mask_size,
                                     score_floor=0)
        for p, r, o in zip(positions, res, orig):
            rows += lpredict.result_rows(frame.at[p, "image_id"], "oracle", r, o)
    table = lpred.make_table(rows)
    s = lsub.score_table(table, gt_csv, {"score_thresh": 0.0, "nms_iou": 1.0, "overlap": "none", "min_area": 0},
                         mask_size=mask_size or None, per_class=False, coco=False, progress=False)
    assert s["num_images"] == 3 and s["kaggle"] > expect, s["kaggle"]


# --------------------------------------------------------------------------------------------- reliability
# (docs/RELIABILITY.md) SIGKILL of a running 05 and rerun; full disk.
from conftest import file_size_limit, kill_when, run_stage, snapshot_files  # noqa: E402


def _cmd05(ckpt, data, out, *extra):
    return ["python", REPO / "05_predict.py", "--checkpoints", ckpt, "--data-dir", data, "--out-dir", out,
            "--workers", "0", "--batch-size", "1", "--shard-size", "1", "--mask-size", "64", "--score-floor", "0",
            "--device", "cpu", "--threads", "1", "--no-progress", *extra]


def _run05_here(ckpt, data, out, **kw):
    """The same run as :func:`_cmd05`, in this process."""
    return _run(out, ckpt, data, batch_size=1, shard_size=1, mask_size=64, device="cpu", threads=1, **kw)


@pytest.fixture(scope="module")
def clean05(tiny_maskrcnn, synthetic_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean05") / "pred"
    _run05_here(tiny_maskrcnn, synthetic_data_dir, out)
    return out


def _same_predictions(a, b):
    pd.testing.assert_frame_equal(lpred.read_table(a / "predictions.parquet"),
                                  lpred.read_table(b / "predictions.parquet"))
    pd.testing.assert_frame_equal(pd.read_parquet(a / "images.parquet"), pd.read_parquet(b / "images.parquet"))
    assert json.loads((b / "meta.json").read_text())["status"] == "done"
    assert not (b / "shards").exists() and not [p for p in b.iterdir() if p.name.startswith(".tmp.")]


@pytest.mark.parametrize("kills, n_test", [pytest.param(2, 0, id="2kills"),
                                           pytest.param(12, 16, id="12kills", marks=pytest.mark.long)])
def test_sigkill_during_05_then_rerun_equals_an_uninterrupted_run(tmp_path, tiny_maskrcnn, synthetic_data_dir,
                                                                  clean05, kills, n_test):
    """SIGKILL 05 at random moments after its first shard, rerun the same command each time; the final
    prediction table equals an uninterrupted run's, and no half-written shard is ever taken as done."""
    data, clean = synthetic_data_dir, clean05
    if n_test:
        from lib import synthetic

        data, clean = tmp_path / "data", tmp_path / "clean"
        synthetic.generate_dataset(data, n_train=1, n_test=n_test, seed=2, min_side=128, max_side=192,
                                   progress=False)
        _run05_here(tiny_maskrcnn, data, clean)
    out = tmp_path / "killed"
    rng = np.random.default_rng(kills)
    hit = 0
    for _ in range(kills):
        shards = out / "shards"
        n_done = len(list(shards.glob("images-*"))) if shards.is_dir() else 0
        ready = lambda: shards.is_dir() and len(list(shards.glob("images-*"))) > n_done  # noqa: E731
        hit += kill_when(_cmd05(tiny_maskrcnn, data, out), ready, delay=float(rng.uniform(0, 0.05)))
        if json.loads((out / "meta.json").read_text()).get("status") == "done":
            break
        for f in shards.glob("images-*.parquet"):  # every shard marked done is complete and readable
            assert (shards / f.name.replace("images-", "part-")).is_file()
            lpred.read_table(shards / f.name.replace("images-", "part-"))
    assert hit >= max(1, kills // 2)
    _run05_here(tiny_maskrcnn, data, out)  # the rerun (same configuration, so it resumes the shards)
    _same_predictions(clean, out)
    print(f"05 SIGKILL: {hit} kills, then rerun: identical prediction table")


def test_disk_full_during_05_stops_with_a_clear_error_and_resumes(tmp_path, tiny_maskrcnn, synthetic_data_dir,
                                                                  clean05):
    out = tmp_path / "out"
    _run05_here(tiny_maskrcnn, synthetic_data_dir, out, stop_after=1)
    before = snapshot_files(out)
    r = run_stage(_cmd05(tiny_maskrcnn, synthetic_data_dir, out), preexec_fn=file_size_limit(6000))
    assert r.returncode != 0
    assert "File too large" in r.stderr.strip().splitlines()[-1], r.stderr[-2000:]
    after = snapshot_files(out)
    assert not [k for k in after if ".tmp." in k]
    assert {k: v for k, v in after.items() if k != "meta.json"} == {k: v for k, v in before.items() if k != "meta.json"}
    assert not (out / "predictions.parquet").exists()
    _run05_here(tiny_maskrcnn, synthetic_data_dir, out)  # space again: resumes
    _same_predictions(clean05, out)


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
    views = lpredict.tta_views((1.0,), flip=True)
    with torch.no_grad():
        ref = lpredict.predict_batch(model, images, [(180, 240)], views, mask_size=64, score_floor=0.0)[0]
        got = lpredict.predict_batch(model, images, [(180, 240)], views, mask_size=64, score_floor=0.0,
                                     dtype=torch.bfloat16)[0]
    n = len(got["scores"])
    assert n > 0 and got["masks"].shape == (n, 64, 64) and got["masks"].dtype == np.uint8
    assert got["scores"].dtype == np.float32 and np.isfinite(got["scores"]).all()
    assert np.isfinite(got["boxes"]).all() and (got["boxes"][:, 2:] <= [240, 180]).all()
    if arch == "maskrcnn":
        assert got["attr_scores"].shape == (n, 92) and got["attr_scores"].dtype == np.float32
    # bf16 rounds activations (~3 significant digits): the best detection's score stays close to fp32's
    assert abs(float(got["scores"][0]) - float(ref["scores"][0])) < 0.05
