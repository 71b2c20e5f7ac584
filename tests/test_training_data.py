"""lib/training_data.py: items from the prepared set, v2 transforms, collate and the seeded loader."""
import shutil

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from lib import prepared as lprepared
from lib.kaggle_data import read_image
from lib.boxes import mask_bbox
from lib.training_data import (BoxesFromMasks, EpochSampler, PreparedDataset, build_transforms, collate_fn,
                               instance_fields, make_loader)


def _box_of(mask: torch.Tensor) -> list[float]:
    return [float(v) for v in mask_bbox(mask.numpy())]


def test_items_types_shapes_and_boxes_match_masks(prepared_set):
    ds = PreparedDataset(prepared_set, "train")
    index = lprepared.load_index(prepared_set, "train")
    assert len(ds) == len(index) > 0
    n_total = n_attr_total = 0
    for i in range(len(ds)):
        image, target = ds[i]
        row = index.iloc[i]
        h, w = int(row["height"]), int(row["width"])
        assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8 and image.shape == (3, h, w)
        assert target["image_id"] == row["image_id"]
        boxes, labels, masks = target["boxes"], target["labels"], target["masks"]
        n = int(row["num_instances"])
        n_total += n
        assert isinstance(boxes, tv_tensors.BoundingBoxes) and boxes.format == tv_tensors.BoundingBoxFormat.XYXY
        assert boxes.dtype == torch.float32 and boxes.shape == (n, 4) and tuple(boxes.canvas_size) == (h, w)
        assert isinstance(masks, tv_tensors.Mask) and masks.dtype == torch.uint8 and masks.shape == (n, h, w)
        assert set(torch.unique(masks).tolist()) <= {0, 1}
        assert labels.dtype == torch.int64 and labels.shape == (n,)
        ann = lprepared.read_ann(prepared_set, row["image_id"])
        assert labels.tolist() == [a["category"] + 1 for a in ann["instances"]]
        attrs = target["attributes"]
        assert attrs.dtype == torch.float32 and attrs.shape == (n, 92)
        assert set(torch.unique(attrs).tolist()) <= {0.0, 1.0}
        assert [r.nonzero().flatten().tolist() for r in attrs] == [sorted(a["attributes"]) for a in ann["instances"]]
        n_attr_total += int(attrs.sum())
        for b, m in zip(boxes, masks):
            assert b.tolist() == _box_of(m)  # x2/y2 exclusive, exactly the mask's extent
        # RGB channel order: the same pixels as OpenCV's BGR read, reversed
        bgr = __import__("cv2").imread(str(lprepared.image_path(prepared_set, row["image_id"])))
        assert np.array_equal(image.permute(1, 2, 0).numpy(), bgr[:, :, ::-1])
    assert n_total > 0 and n_attr_total > 0  # the synthetic garments carry attributes


def test_split_none_and_image_ids(prepared_set):
    all_ids = list(lprepared.load_index(prepared_set)["image_id"])
    assert PreparedDataset(prepared_set, None).image_ids == all_ids
    val_ids = list(lprepared.load_index(prepared_set, "val")["image_id"])
    sub = PreparedDataset(prepared_set, "val", image_ids=val_ids[::-1])
    assert sub.image_ids == val_ids[::-1]
    assert sub[0][1]["image_id"] == val_ids[-1]
    train_id = lprepared.load_index(prepared_set, "train")["image_id"][0]
    with pytest.raises(ValueError, match="not in split 'val'"):
        PreparedDataset(prepared_set, "val", image_ids=[train_id])


def test_hflip_moves_image_masks_and_boxes_together(prepared_set):
    ds = PreparedDataset(prepared_set, "train")
    flip = build_transforms(True, hflip=1.0, color_jitter=0.0)
    image, target = ds[0]
    fimage, ft = flip(image, target)
    w = image.shape[-1]
    assert fimage.dtype == torch.float32
    assert torch.allclose(fimage, image.flip(-1).float() / 255, atol=1e-6)
    assert torch.equal(ft["masks"], target["masks"].flip(-1))
    assert torch.equal(ft["labels"], target["labels"])
    assert torch.equal(ft["attributes"], target["attributes"])
    expected = target["boxes"].clone()
    expected[:, 0], expected[:, 2] = w - target["boxes"][:, 2], w - target["boxes"][:, 0]
    assert torch.allclose(ft["boxes"], expected)
    for b, m in zip(ft["boxes"], ft["masks"]):
        assert b.tolist() == _box_of(m)


def test_eval_transforms_only_convert_dtype(prepared_set):
    image, target = PreparedDataset(prepared_set, "val")[0]
    out, t = build_transforms(False)(image, target)
    assert out.dtype == torch.float32 and float(out.max()) <= 1.0
    assert torch.allclose(out, image.float() / 255, atol=1e-6)
    assert torch.equal(t["boxes"], target["boxes"]) and torch.equal(t["masks"], target["masks"])


def test_scale_range_resizes_short_side_and_keeps_boxes_on_masks(prepared_set):
    ds = PreparedDataset(prepared_set, "train", build_transforms(True, scale_range=(64, 96), hflip=0.0,
                                                                  color_jitter=0.0))
    torch.manual_seed(0)
    sizes = set()
    for i in range(len(ds)):
        image, t = ds[i]
        short = min(image.shape[-2:])
        assert short in (64, 96)
        sizes.add(short)
        assert t["masks"].shape[-2:] == image.shape[-2:] and tuple(t["boxes"].canvas_size) == tuple(image.shape[-2:])
        assert t["masks"].flatten(1).any(1).all()  # no instance resized away
        for b, m in zip(t["boxes"], t["masks"]):  # boxes follow the resized masks exactly
            assert b.tolist() == _box_of(m)
    with pytest.raises(ValueError, match="target_size"):
        build_transforms(True, scale_range=(0.5, 1.5))
    with pytest.raises(ValueError, match="lo <= hi"):
        build_transforms(True, scale_range=(2.0, 1.0), target_size=160)


def test_scale_jitter_factors(prepared_set):
    ds = PreparedDataset(prepared_set, "train", build_transforms(True, scale_range=(0.5, 0.5), hflip=0.0,
                                                                  color_jitter=0.0, target_size=160))
    image, t = ds[0]
    raw, _ = PreparedDataset(prepared_set, "train")[0]
    assert abs(max(image.shape[-2:]) - 0.5 * max(raw.shape[-2:])) <= 1


def _sample(h=32, w=40):
    image = tv_tensors.Image(torch.randint(0, 256, (3, h, w), dtype=torch.uint8))
    masks = torch.zeros((4, h, w), dtype=torch.uint8)
    masks[0, 2:10, 3:12] = 1  # fine
    masks[1, 5:6, 7:8] = 1  # one pixel, box [7, 5, 8, 6]: 1 px wide, kept
    # 2: degenerate box (zero width), its mask has a pixel but the box is invalid -> dropped by Sanitize
    masks[2, 20:25, 30:31] = 1
    # 3: valid box but empty mask -> dropped by DropEmptyMasks
    boxes = [[3, 2, 12, 10], [7, 5, 8, 6], [30, 20, 30, 25], [0, 0, 10, 10]]
    target = {"boxes": tv_tensors.BoundingBoxes(torch.tensor(boxes, dtype=torch.float32), format="XYXY",
                                                canvas_size=(h, w)),
              "labels": torch.tensor([1, 2, 3, 4]), "masks": tv_tensors.Mask(masks), "image_id": "x.jpg",
              "attributes": torch.eye(4, 92)}  # instance i has attribute i
    return image, target


def test_degenerate_boxes_and_empty_masks_are_dropped_with_their_labels_and_masks():
    image, target = _sample()
    _, t = build_transforms(True, hflip=0.0, color_jitter=0.0)(image, target)
    assert t["labels"].tolist() == [1, 2]
    assert torch.equal(t["attributes"], torch.eye(4, 92)[:2])  # still row i = attribute of label i + 1
    assert torch.equal(t["masks"], target["masks"][:2])
    assert t["boxes"].tolist() == target["boxes"][:2].tolist()
    assert t["image_id"] == "x.jpg"
    # BoxesFromMasks alone: the empty-mask instance goes, boxes become the mask extents
    _, t2 = BoxesFromMasks()(image, target)
    assert t2["labels"].tolist() == [1, 2, 3] and t2["masks"].shape[0] == 3
    assert torch.equal(t2["attributes"], torch.eye(4, 92)[:3])
    assert isinstance(t2["boxes"], tv_tensors.BoundingBoxes) and isinstance(t2["masks"], tv_tensors.Mask)
    assert t2["boxes"].tolist() == [[3, 2, 12, 10], [7, 5, 8, 6], [30, 20, 31, 25]]


def test_image_without_instances_passes_through():
    image = tv_tensors.Image(torch.zeros((3, 16, 16), dtype=torch.uint8))
    target = {"boxes": tv_tensors.BoundingBoxes(torch.zeros((0, 4)), format="XYXY", canvas_size=(16, 16)),
              "labels": torch.zeros((0,), dtype=torch.int64),
              "masks": tv_tensors.Mask(torch.zeros((0, 16, 16), dtype=torch.uint8)), "image_id": "e.jpg"}
    out, t = build_transforms(True, scale_range=(32, 32))(image, target)
    assert out.shape == (3, 32, 32) and t["boxes"].shape == (0, 4) and t["masks"].shape == (0, 32, 32)


def test_collate_returns_lists():
    a, b = _sample(), _sample(20, 24)
    images, targets = collate_fn([a, b])
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == len(targets) == 2
    assert images[1].shape == (3, 20, 24) and targets[0]["image_id"] == "x.jpg"
    assert collate_fn([]) == ([], [])


def _epoch(loader, epoch):
    loader.sampler.set_epoch(epoch)
    out = []
    for images, targets in loader:
        out.extend((t["image_id"], im) for im, t in zip(images, targets))
    return out


def test_loader_is_deterministic_for_a_seed(prepared_set):
    tf = build_transforms(True, hflip=0.5, color_jitter=0.4)
    ds = PreparedDataset(prepared_set, "train", tf)
    # workers: their augmentation seeds come from the loader's seeded generator
    a = _epoch(make_loader(ds, 3, shuffle=True, workers=2, seed=7), 0)
    b = _epoch(make_loader(ds, 3, shuffle=True, workers=2, seed=7), 0)
    assert [i for i, _ in a] == [i for i, _ in b]
    assert sorted(i for i, _ in a) == sorted(ds.image_ids)
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(a, b))
    # the order depends on (seed, epoch) only
    orders = {s: [i for i, _ in _epoch(make_loader(ds, 3, shuffle=True, workers=0, seed=s), 0)] for s in range(6)}
    assert len({tuple(o) for o in orders.values()}) > 1
    ld = make_loader(ds, 3, shuffle=True, workers=0, seed=7)
    assert [i for i, _ in _epoch(ld, 0)] == [i for i, _ in a]
    e1 = [i for i, _ in _epoch(ld, 1)]
    assert e1 == [i for i, _ in _epoch(make_loader(ds, 3, shuffle=True, workers=0, seed=7), 1)]
    # unshuffled = index order
    assert [i for i, _ in _epoch(make_loader(ds, 2, shuffle=False), 0)] == ds.image_ids


def test_epoch_sampler_shards_and_skips():
    data = list(range(10))
    full = EpochSampler(data, shuffle=True, seed=3)
    full.set_epoch(2)
    order = list(full)
    assert sorted(order) == data
    full.set_skip(4)
    assert list(full) == order[4:] and len(full) == 6
    shards = []
    for r in range(2):
        s = EpochSampler(data, shuffle=True, seed=3, num_replicas=2, rank=r)
        s.set_epoch(2)
        shards.append(list(s))
        assert len(s) == 5
    assert sorted(shards[0] + shards[1]) == data


def test_unreadable_image_names_the_file(prepared_set, tmp_path):
    bad = tmp_path / "cache"
    shutil.copytree(prepared_set, bad)
    ds = PreparedDataset(bad, "train")
    p = lprepared.image_path(bad, ds.image_ids[0])
    p.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=p.name):
        ds[0]
    with pytest.raises(ValueError, match="image file not found"):
        read_image(tmp_path / "missing.jpg")


def test_instance_fields_filter_without_attributes_and_on_scaling(prepared_set):
    # a target without attributes (e.g. built by hand) still goes through the train transforms
    image, target = _sample()
    del target["attributes"]
    _, t = build_transforms(True, hflip=0.0, color_jitter=0.0)(image, target)
    assert t["labels"].tolist() == [1, 2] and "attributes" not in t
    assert instance_fields((image, {"labels": target["labels"]}))[0] is target["labels"]
    # resizing that drops instances keeps the attribute rows with their labels
    ds = PreparedDataset(prepared_set, "train", build_transforms(True, scale_range=(0.1, 0.1), hflip=0.0,
                                                                  color_jitter=0.0, target_size=160))
    raw = PreparedDataset(prepared_set, "train")
    dropped = 0
    for i in range(len(ds)):
        torch.manual_seed(i)
        _, t = ds[i]
        _, r = raw[i]
        assert t["attributes"].shape == (len(t["labels"]), 92)
        dropped += len(r["labels"]) - len(t["labels"])
        # each kept instance is a raw instance with the same label and attributes
        pairs = {(int(lab), tuple(a.tolist())) for lab, a in zip(r["labels"], r["attributes"])}
        assert all((int(lab), tuple(a.tolist())) in pairs for lab, a in zip(t["labels"], t["attributes"]))
    assert dropped > 0  # at 16 px long side thin parts vanish


def test_bad_attribute_id_names_the_file(prepared_set, tmp_path):
    import json

    bad = tmp_path / "cache"
    shutil.copytree(prepared_set, bad)
    ds = PreparedDataset(bad, "train")
    i = next(k for k in range(len(ds)) if len(ds[k][1]["labels"]))
    p = lprepared.ann_path(bad, ds.image_ids[i])
    ann = json.loads(p.read_text())
    ann["instances"][0]["attributes"] = [3, 92]
    p.write_text(json.dumps(ann))
    with pytest.raises(ValueError, match=f"{p.name}.*instance 0.*\\[92\\]"):
        ds[i]
    assert PreparedDataset(bad, "train", num_attributes=93)[i][1]["attributes"].shape[1] == 93
