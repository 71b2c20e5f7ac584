"""lib/mask_paste.py: the batched paste against torchvision's, chunking, autocast, the crops of a real detector."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import paste_masks_in_image

from lib import tta as ltta
from lib import models as lmodels
from lib.mask_paste import crops_from, masks_in_frame, paste_masks, resize_maps


def smooth_crops(n, m=28, seed=0):
    """``(n, 1, m, m)`` blob-like probabilities: sigmoid of upsampled 5 x 5 noise."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, 1, 5, 5, generator=g) * 4
    return torch.sigmoid(F.interpolate(noise, size=(m, m), mode="bilinear", align_corners=False))


def random_boxes(n, hw, lo=20, hi=200, seed=0, inside=True):
    """``(n, 4)`` float32 boxes of ``lo..hi`` px; inside the ``hw`` image, or (``inside=False``) with their
    centre in it, so that many cross an edge (torchvision's paste fails on boxes wholly outside)."""
    g = torch.Generator().manual_seed(seed)
    size = torch.tensor([hw[1], hw[0]], dtype=torch.float32)
    wh = torch.rand(n, 2, generator=g) * (hi - lo) + lo
    if inside:
        xy = torch.rand(n, 2, generator=g) * (size - wh).clamp(min=0)
    else:
        xy = torch.rand(n, 2, generator=g) * size - wh / 2
    return torch.cat([xy, xy + wh], 1)


def iou(a, b):
    """Per-mask IoU of ``(N, H, W)`` probabilities binarised at 0.5 (1 where both are empty)."""
    a, b = a >= 0.5, b >= 0.5
    inter, union = (a & b).flatten(1).sum(1).double(), (a | b).flatten(1).sum(1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


@pytest.mark.parametrize("by_box", [True, False])
@pytest.mark.parametrize("inside", [True, False])
def test_paste_equals_torchvision_at_the_same_size(by_box, inside):
    crops, boxes = smooth_crops(40), random_boxes(40, (256, 256), inside=inside)
    ref = paste_masks_in_image(crops, boxes, (256, 256))[:, 0]
    got = paste_masks(crops, boxes, (256, 256), by_box=by_box)
    assert got.shape == (40, 256, 256) and got.dtype == torch.float32
    assert (ref >= 0.5).flatten(1).any(1).sum() >= 20  # most masks land (partly) in the frame
    assert iou(got, ref).min() >= 0.99
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)  # the same rule: equal up to float rounding
    assert torch.equal(got, paste_masks(crops[:, 0], boxes, (256, 256), by_box=by_box))  # (N, M, M) crops


def test_zero_outside_each_box():
    crops = torch.ones(30, 1, 28, 28)  # a full crop reaches its box's edges
    boxes = random_boxes(30, (128, 160), lo=5, hi=100, inside=False)
    got = paste_masks(crops, boxes, (128, 160))
    ys, xs = torch.arange(128.0)[:, None] + 0.5, torch.arange(160.0)[None] + 0.5
    for m, (x1, y1, x2, y2) in zip(got, boxes.tolist()):
        # torchvision's padded box is (M + 2) / M wider, rounded to whole pixels (+1): 2 px margin is ample
        mx, my = (x2 - x1) / 28 + 2, (y2 - y1) / 28 + 2
        outside = (xs < x1 - mx) | (xs > x2 + mx) | (ys < y1 - my) | (ys > y2 + my)
        assert (m[outside] == 0).all()
        inner = (xs > x1 + mx) & (xs < x2 - mx) & (ys > y1 + my) & (ys < y2 - my)
        torch.testing.assert_close(m[inner], torch.ones_like(m[inner]))


def test_no_detections_and_bad_shapes():
    for crops in (torch.zeros(0, 28, 28), torch.zeros(0, 1, 28, 28)):
        for by_box in (True, False):
            out = paste_masks(crops, torch.zeros(0, 4), (30, 40), by_box=by_box)
            assert out.shape == (0, 30, 40) and out.dtype == torch.float32
    out = masks_in_frame({"mask_crops": torch.zeros(0, 1, 28, 28), "boxes": torch.zeros(0, 4)}, (60, 80), (16, 16))
    assert out.shape == (0, 16, 16)
    with pytest.raises(ValueError, match="boxes"):
        paste_masks(torch.zeros(2, 28, 28), torch.zeros(3, 4), (8, 8))
    with pytest.raises(ValueError, match="crops"):
        paste_masks(torch.zeros(2, 2, 28, 28), torch.zeros(2, 4), (8, 8))


def test_float32_under_bf16_autocast():
    crops, boxes = smooth_crops(8), random_boxes(8, (96, 128), hi=80)
    ref = paste_masks(crops, boxes, (96, 128))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = paste_masks(crops, boxes, (96, 128))
        from_bf16 = paste_masks(crops.bfloat16(), boxes.bfloat16(), (96, 128))
    assert got.dtype == torch.float32 and from_bf16.dtype == torch.float32
    assert torch.equal(got, ref)
    assert iou(from_bf16, ref).mean() > 0.95  # bf16 inputs are rounded first; the paste itself is float32


def test_chunking_and_by_box_give_identical_results():
    crops, boxes = smooth_crops(23, m=14), random_boxes(23, (70, 90), lo=4, hi=60, inside=False)
    ref = paste_masks(crops, boxes, (70, 90), by_box=False)
    for chunk in (1, 5, 100):
        assert torch.equal(paste_masks(crops, boxes, (70, 90), chunk=chunk, by_box=False), ref)
    assert torch.equal(paste_masks(crops, boxes, (70, 90), by_box=True), ref)
    # in a smaller frame too (boxes placed at the input size)
    small = paste_masks(crops, boxes, (35, 40), by_box=False, box_hw=(70, 90), chunk=4)
    assert torch.equal(paste_masks(crops, boxes, (35, 40), by_box=True, box_hw=(70, 90)), small)


def test_smaller_frame_matches_the_full_size_paste_resized():
    """05's case: the paste straight into 512 x 512 vs torchvision's at the input size resized to 512 x 512
    (what 05 did before): the same masks up to the resize's antialiasing."""
    crops, boxes = smooth_crops(60, seed=3), random_boxes(60, (600, 800), lo=20, hi=300, seed=3)
    old = resize_maps(paste_masks_in_image(crops, boxes, (600, 800)), (512, 512))
    new = masks_in_frame({"mask_crops": crops, "boxes": boxes}, (600, 800), (512, 512))
    ious = iou(new, old)
    assert ious.mean() >= 0.98 and ious.min() >= 0.85, (ious.mean(), ious.min())
    areas = (new >= 0.5).flatten(1).sum(1).double() / (old >= 0.5).flatten(1).sum(1).double()
    assert abs(float(areas.mean()) - 1) < 0.01  # no growth from rounding boxes to whole frame pixels
    assert torch.equal(masks_in_frame({"mask_crops": crops, "boxes": boxes}, (600, 800), (600, 800)),
                       paste_masks(crops, boxes, (600, 800)))


def test_masks_in_frame_for_both_output_kinds():
    crops, boxes = smooth_crops(5), random_boxes(5, (60, 80), hi=50)
    det = {"mask_crops": crops, "boxes": boxes, "scores": torch.rand(5)}
    got = masks_in_frame(det, (60, 80), (30, 32))
    assert got.shape == (5, 30, 32) and got.dtype == torch.float32
    assert torch.equal(got, paste_masks(crops, boxes, (30, 32), box_hw=(60, 80)))
    rows = torch.tensor([3, 1])
    assert torch.equal(masks_in_frame(det, (60, 80), (30, 32), rows=rows), got[rows])
    full = paste_masks(crops, boxes, (60, 80))[:, None]  # a UNet-like output: full-size (N, 1, h, w) masks
    unet_like = {"masks": full, "boxes": boxes}
    assert torch.equal(masks_in_frame(unet_like, (60, 80), (60, 80)), full[:, 0])
    torch.testing.assert_close(masks_in_frame(unet_like, (60, 80), (30, 32), rows=slice(1, 3)),
                               F.interpolate(full[1:3], size=(30, 32), mode="bilinear", align_corners=False,
                                             antialias=True)[:, 0])
    with pytest.raises(KeyError, match="mask_crops"):
        masks_in_frame({"boxes": boxes}, (60, 80), (30, 32))


TINY = {"maskrcnn": dict(backbone="resnet18", min_size=96, max_size=96, box_score_thresh=0.0,
                         box_detections_per_img=20),
        "deepmac": dict(backbone="resnet18", min_size=96, max_size=96, box_score_thresh=0.0,
                        box_detections_per_img=20, mask_head_width=16, mask_head_depth=2, mask_head_stacks=1,
                        mask_roi_size=16)}


@pytest.mark.parametrize("arch", ["maskrcnn", "deepmac"])
def test_crops_from_a_detector_paste_to_its_own_masks(arch):
    torch.manual_seed(0)
    model = lmodels.build_model(lmodels.default_config(arch, **TINY[arch])).eval()
    images = [torch.rand(3, 90, 120), torch.rand(3, 150, 100)]  # resized by the model (up and down)
    with torch.no_grad():
        ref = model(images)
        with crops_from(model) as m:
            assert m is model and model.transform.paste_masks is False
            got = model(images)
    assert model.transform.paste_masks is True  # restored
    n_checked = 0
    for img, r, g in zip(images, ref, got):
        hw = tuple(img.shape[-2:])
        assert "masks" not in g and g["mask_crops"].ndim == 4 and g["mask_crops"].shape[1] == 1
        for key in ("boxes", "labels", "scores"):
            assert torch.equal(g[key], r[key]), key
        maps = masks_in_frame(g, hw, hw)
        assert maps.shape == (len(r["scores"]), *hw)
        torch.testing.assert_close(maps, r["masks"][:, 0], atol=1e-4, rtol=0)
        big = (r["masks"][:, 0] >= 0.5).flatten(1).sum(1) >= 20  # non-tiny masks
        n_checked += int(big.sum())
        assert iou(maps[big], r["masks"][big, 0]).min() >= 0.99
    assert n_checked >= 5


def test_crops_from_is_a_no_op_without_a_paste_switch():
    unet = lmodels.build_model(lmodels.default_config("unet", encoder="resnet18", min_size=64, max_size=64,
                                                      decoder_channels=[16, 16, 8, 8, 8])).eval()
    plain = torch.nn.Linear(2, 2)
    with crops_from(plain) as m:
        assert m is plain
    with torch.no_grad(), crops_from(unet):
        out = unet([torch.rand(3, 40, 60)])[0]
    assert "masks" in out and "mask_crops" not in out  # the UNet never pastes: full-size masks as usual
    assert masks_in_frame(out, (40, 60), (20, 20)).shape == (len(out["scores"]), 20, 20)


def test_05_masks_of_a_detector_are_the_models_own_at_the_input_size():
    """predict_batch pastes the crops into the stored frame; before, the model pasted them at the input size
    and 05 resized those maps. With the stored frame at the input size both are the model's paste (a random
    model's crops are noise, so a smaller frame, which samples them without the resize's antialiasing, is
    checked on smooth masks in test_smaller_frame_matches_the_full_size_paste_resized)."""
    torch.manual_seed(0)
    model = lmodels.build_model(lmodels.default_config("maskrcnn", **TINY["maskrcnn"])).eval()
    img = torch.rand(3, 90, 120)
    with torch.no_grad():
        res = ltta.predict_batch(model, [img], [(90, 120)], [(1.0, False)], mask_size=0, score_floor=0.0)[0]
        flipped = ltta.predict_batch(model, [img.flip(-1)], [(90, 120)], [(1.0, True)], mask_size=0,
                                           score_floor=0.0)[0]
        out = model([img])[0]
    order = torch.argsort(out["scores"], descending=True, stable=True)
    old = (out["masks"][order, 0] * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    assert res["masks"].shape == old.shape and res["masks"].dtype == np.uint8 and len(old) > 5
    np.testing.assert_array_equal(res["categories"], (out["labels"][order] - 1).numpy())
    assert np.abs(res["masks"].astype(int) - old).max() <= 1  # float rounding at a quantization step
    # a flipped view of the mirrored image: the model sees img again, and its masks come back mirrored
    np.testing.assert_array_equal(flipped["categories"], res["categories"])
    np.testing.assert_array_equal(flipped["masks"], res["masks"][:, :, ::-1])
