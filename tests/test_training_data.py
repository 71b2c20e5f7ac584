"""lib/training_data.py: items from the prepared set, v2 transforms, collate and the seeded loader."""
import shutil

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from lib import prepared as lprepared
from lib.kaggle_data import read_image
from lib.boxes import mask_bbox
from lib.training_data import (LSJ_PAD_RGB, BoxesFromMasks, CopyPaste, EpochSampler, GroupedBatchSampler,
                               PreparedDataset, aspect_ratio_bins, aspect_ratio_groups, build_transforms,
                               collate_fn, image_aspect_ratios, instance_fields, lsj_transforms, make_loader,
                               paste_instances, set_epoch)


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
    out, t = v2.Compose([v2.Resize(32, antialias=True), build_transforms(True)])(image, target)  # resized first
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
    shrink = v2.ScaleJitter(target_size=(160, 160), scale_range=(0.1, 0.1), antialias=True)
    ds = PreparedDataset(prepared_set, "train", v2.Compose([shrink, build_transforms(True, hflip=0.0,
                                                                                     color_jitter=0.0)]))
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


# ------------------------------------------------------------------------------ aspect-ratio grouped batches
def test_aspect_ratio_bins_and_groups_follow_torchvision():
    assert aspect_ratio_bins(0) == [1.0]
    bins = aspect_ratio_bins(3)  # torchvision's --aspect-ratio-group-factor 3: 7 edges, 8 groups
    assert len(bins) == 7 and bins[0] == pytest.approx(0.5) and bins[3] == pytest.approx(1.0)
    assert bins[-1] == pytest.approx(2.0) and bins == sorted(bins)
    assert all(b / a == pytest.approx(2 ** (1 / 3)) for a, b in zip(bins, bins[1:]))  # log-spaced
    # bisect_right: an edge belongs to the group above it
    assert aspect_ratio_groups([0.4, 0.5, 0.67, 1.0, 1.5, 2.0, 3.0], 3) == [0, 1, 2, 4, 5, 7, 7]
    assert aspect_ratio_groups([0.7, 1.0, 1.4], 0) == [0, 1, 1]
    with pytest.raises(ValueError, match=">= 0"):
        aspect_ratio_bins(-1)


class _Order:
    """A stand-in for EpochSampler with a fixed order."""

    def __init__(self, order):
        self._order = list(order)

    def order(self):
        return list(self._order)

    def full_len(self):
        return len(self._order)


def test_grouped_batches_are_one_group_except_the_leftovers():
    groups = [0, 1, 0, 0, 1, 2, 0, 1, 2, 0]
    s = GroupedBatchSampler(_Order(range(10)), groups, batch_size=3)
    # streamed: group 0 fills at index 3, group 0 again at index 9; the rest are joined in group order
    assert s.batches() == [[0, 2, 3], [1, 4, 7], [6, 9, 5], [8]]
    assert len(s) == 4 and list(s) == s.batches()
    s.set_skip(2)
    assert list(s) == [[6, 9, 5], [8]] and len(s) == 2
    dropped = GroupedBatchSampler(_Order(range(10)), groups, batch_size=3, drop_last=True)
    assert dropped.batches() == [[0, 2, 3], [1, 4, 7], [6, 9, 5]] and len(dropped) == 3


def _fake_sizes(n, seed=0):
    """(height, width) of ``n`` images: mostly portrait, some landscape and square, as the real set."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        long_side, kind = int(rng.integers(400, 1025)), rng.random()
        short = int(long_side * rng.uniform(0.56, 0.85))
        out.append((long_side, long_side) if kind < 0.1 else (long_side, short) if kind < 0.75 else (short, long_side))
    return out


class _SizedSet(torch.utils.data.Dataset):
    """Items are their own index; sizes in ``index`` as a prepared set's index.parquet."""

    def __init__(self, sizes):
        import pandas as pd

        self.index = pd.DataFrame({"height": [h for h, _ in sizes], "width": [w for _, w in sizes]})

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        return i, {"image_id": i}


def _batches(loader):
    return [[t["image_id"] for t in targets] for _, targets in loader]


@pytest.mark.parametrize("n,bs,drop_last", [(53, 4, False), (53, 4, True), (40, 8, False), (7, 8, False)])
def test_grouped_loader_epoch_contract(n, bs, drop_last):
    ds = _SizedSet(_fake_sizes(n))
    groups = aspect_ratio_groups(image_aspect_ratios(ds), 3)
    assert len(set(groups)) > 2
    plain = make_loader(ds, bs, shuffle=True, seed=5, drop_last=drop_last)
    loader = make_loader(ds, bs, shuffle=True, seed=5, drop_last=drop_last, aspect_ratio_group_factor=3)
    assert isinstance(loader.batch_sampler, GroupedBatchSampler)
    assert len(loader) == len(plain) == (n // bs if drop_last else -(-n // bs))  # the engine's steps per epoch
    epochs = {}
    for epoch in (0, 1):
        set_epoch(loader, epoch)
        batches = _batches(loader)
        epochs[epoch] = batches
        assert len(batches) == len(loader)
        flat = [i for b in batches for i in b]
        assert len(flat) == len(set(flat))  # no image twice
        assert set(flat) == set(range(n)) if not drop_last else len(flat) == (n // bs) * bs
        # batches are one group each, except the leftover batches at the end (at most one per group)
        mixed = [k for k, b in enumerate(batches) if len({groups[i] for i in b}) > 1]
        assert all(k >= len(batches) - len(set(groups)) for k in mixed)
        assert sum(len({groups[i] for i in b}) == 1 for b in batches) >= len(batches) - len(set(groups))
        # the same seed and epoch give the same batches, in a new loader too
        again = make_loader(ds, bs, shuffle=True, seed=5, drop_last=drop_last, aspect_ratio_group_factor=3)
        set_epoch(again, epoch)
        assert _batches(again) == batches
        # resuming after k batches gives the tail of the epoch's batches
        for k in sorted({0, 1, 3, len(batches)} & set(range(len(batches) + 1))):
            set_epoch(loader, epoch, skip_batches=k)
            assert len(loader) == len(batches) - k and _batches(loader) == batches[k:]
    assert epochs[0] != epochs[1]
    other = make_loader(ds, bs, shuffle=True, seed=6, drop_last=drop_last, aspect_ratio_group_factor=3)
    set_epoch(other, 0)
    assert _batches(other) != epochs[0] or n <= bs


def test_grouped_loader_with_one_group_is_the_plain_loader():
    ds = _SizedSet([(600, 400)] * 23)  # every image in one group: the same batches as without grouping
    for skip in (0, 2):
        plain = make_loader(ds, 4, shuffle=True, seed=1)
        grouped = make_loader(ds, 4, shuffle=True, seed=1, aspect_ratio_group_factor=3)
        set_epoch(plain, 2, skip)
        set_epoch(grouped, 2, skip)
        assert _batches(grouped) == _batches(plain) and len(grouped) == len(plain)


def test_factor_0_is_the_old_loader():
    ds = _SizedSet(_fake_sizes(21))
    loader = make_loader(ds, 4, shuffle=True, seed=3, aspect_ratio_group_factor=0)
    assert isinstance(loader.sampler, EpochSampler)  # the engine's loader.sampler.set_epoch still works
    old = EpochSampler(ds, shuffle=True, seed=3)
    for epoch, skip in ((0, 0), (1, 0), (1, 2)):
        old.set_epoch(epoch)
        order = old.order()
        expected = [order[k:k + 4] for k in range(0, len(order), 4)][skip:]
        set_epoch(loader, epoch, skip)
        assert _batches(loader) == expected and len(loader) == len(expected)
        # the engine's calls today give the same batches
        loader.sampler.set_epoch(epoch)
        loader.sampler.set_skip(skip * 4)
        assert _batches(loader) == expected


def test_grouped_loader_shards_over_ranks(monkeypatch):
    import torch.distributed as dist

    n, bs = 48, 4
    ds = _SizedSet(_fake_sizes(n, seed=2))
    groups = aspect_ratio_groups(image_aspect_ratios(ds), 3)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    shards = []
    for rank in (0, 1):
        monkeypatch.setattr(dist, "get_rank", lambda rank=rank: rank)
        loader = make_loader(ds, bs, shuffle=True, seed=4, distributed=True, aspect_ratio_group_factor=3)
        assert len(loader) == n // 2 // bs
        set_epoch(loader, 1)
        batches = _batches(loader)
        assert len(batches) == len(loader)
        assert sum(len({groups[i] for i in b}) > 1 for b in batches) <= len(set(groups))
        set_epoch(loader, 1, skip_batches=2)
        assert _batches(loader) == batches[2:]
        shards.append([i for b in batches for i in b])
    assert not set(shards[0]) & set(shards[1]) and sorted(shards[0] + shards[1]) == list(range(n))


def test_grouped_loader_on_a_prepared_set(prepared_set, tmp_path):
    ds = PreparedDataset(prepared_set, "train", build_transforms(False))
    ratios = image_aspect_ratios(ds)
    index = lprepared.load_index(prepared_set, "train")
    assert ratios == pytest.approx(list(index["width"] / index["height"]))
    # without the index's sizes they come from the image files' headers
    ds.index = ds.index.drop(columns=["height", "width"])
    assert image_aspect_ratios(ds) == pytest.approx(ratios)
    assert image_aspect_ratios(torch.utils.data.Subset(ds, [2, 0])) == pytest.approx([ratios[2], ratios[0]])
    with pytest.raises(ValueError, match="size"):
        image_aspect_ratios(list(range(3)))
    loader = make_loader(PreparedDataset(prepared_set, "train"), 2, shuffle=True, workers=1, seed=0,
                         aspect_ratio_group_factor=1)
    set_epoch(loader, 0)
    ids = [t["image_id"] for _, targets in loader for t in targets]
    assert sorted(ids) == sorted(ds.image_ids) and len(loader) == -(-len(ds) // 2)


# ------------------------------------------------------------------------------ copy-paste and large-scale jitter
def _target(h, w, rects, labels, attributes=None):
    """A float image's target: one 0/1 mask per ``(y1, y2, x1, x2)`` rectangle, boxes from the masks."""
    masks = torch.zeros((len(rects), h, w), dtype=torch.uint8)
    for k, (y1, y2, x1, x2) in enumerate(rects):
        masks[k, y1:y2, x1:x2] = 1
    boxes = [[x1, y1, x2, y2] for y1, y2, x1, x2 in rects]
    return {"boxes": tv_tensors.BoundingBoxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), format="XYXY",
                                              canvas_size=(h, w)),
            "labels": torch.tensor(labels, dtype=torch.int64), "masks": tv_tensors.Mask(masks),
            "attributes": torch.eye(len(rects), 92) if attributes is None else attributes, "image_id": "t.jpg"}


def _image(h, w, value):
    return tv_tensors.Image(torch.full((3, h, w), float(value)))


def _paste_case():
    """Target 16 x 20 (zeros): A rows 0:8 cols 0:8, C inside the pasted square, D 12 px of which 6 are covered,
    E one pixel far away. Source (ones): P rows 0:8 cols 4:12 (chosen) and Q (not chosen)."""
    target = _target(16, 20, [(0, 8, 0, 8), (2, 6, 6, 10), (5, 8, 10, 14), (14, 15, 18, 19)], [1, 2, 3, 4])
    src_attr = torch.zeros(2, 92)
    src_attr[0, [5, 7]] = 1
    source = _target(16, 20, [(0, 8, 4, 12), (12, 16, 0, 4)], [10, 11], src_attr)
    return _image(16, 20, 0), target, _image(16, 20, 1), source


def test_paste_cuts_covered_masks_drops_remnants_and_carries_the_pasted_attributes():
    image, target, src_image, source = _paste_case()
    before = {k: v.clone() for k, v in target.items() if torch.is_tensor(v)}
    out_image, t = paste_instances(image, target, src_image, source, torch.tensor([0]))
    # A keeps its left half (box recomputed), C (covered) and D (6 px left) are gone, E (1 px, untouched) stays
    assert t["labels"].tolist() == [1, 4, 10]
    assert t["boxes"].tolist() == [[0, 0, 4, 8], [18, 14, 19, 15], [4, 0, 12, 8]]
    assert isinstance(t["boxes"], tv_tensors.BoundingBoxes) and tuple(t["boxes"].canvas_size) == (16, 20)
    assert isinstance(t["masks"], tv_tensors.Mask) and isinstance(out_image, tv_tensors.Image)
    expected = _target(16, 20, [(0, 8, 0, 4), (14, 15, 18, 19), (0, 8, 4, 12)], [1, 4, 10])["masks"]
    assert torch.equal(t["masks"], expected)
    eye = torch.eye(4, 92)
    assert torch.equal(t["attributes"], torch.stack([eye[0], eye[3], source["attributes"][0]]))
    assert t["attributes"][2].nonzero().flatten().tolist() == [5, 7] and t["image_id"] == "t.jpg"
    # the image takes the source's pixels exactly under the pasted mask
    assert torch.equal(out_image, expected[2].bool().expand(3, -1, -1).float())
    for b, m in zip(t["boxes"], t["masks"]):
        assert b.tolist() == _box_of(m)
    assert all(torch.equal(target[k], v) for k, v in before.items())  # inputs untouched
    # the remnant threshold: D keeps 6 pixels, kept from min_pixels 6 on
    _, t6 = paste_instances(image, target, src_image, source, torch.tensor([0]), min_pixels=6)
    assert t6["labels"].tolist() == [1, 3, 4, 10] and t6["boxes"][1].tolist() == [12, 5, 14, 8]
    _, t7 = paste_instances(image, target, src_image, source, torch.tensor([0]), min_pixels=7)
    assert t7["labels"].tolist() == [1, 4, 10]
    # nothing chosen: unchanged
    same_image, same = paste_instances(image, target, src_image, source, torch.tensor([], dtype=torch.int64))
    assert same_image is image and same is target


def test_paste_from_a_larger_image_cuts_at_the_frame():
    target = _target(16, 20, [(10, 16, 0, 6)], [1])
    src_image = tv_tensors.Image(torch.arange(3 * 24 * 30, dtype=torch.float32).reshape(3, 24, 30))
    # X: 32 px, 16 in the 16 x 20 frame (kept); Y below the frame; Z: 16 px, 4 in the frame (dropped)
    source = _target(24, 30, [(4, 8, 16, 24), (18, 22, 0, 4), (10, 12, 18, 26)], [5, 6, 7])
    out_image, t = paste_instances(_image(16, 20, 0), target, src_image, source, torch.tensor([0, 1, 2]))
    assert t["labels"].tolist() == [1, 5] and t["boxes"].tolist() == [[0, 10, 6, 16], [16, 4, 20, 8]]
    assert torch.equal(t["attributes"], torch.stack([torch.eye(1, 92)[0], torch.eye(3, 92)[0]]))
    assert out_image.shape == (3, 16, 20)
    assert torch.equal(out_image[:, 4:8, 16:20], src_image[:, 4:8, 16:20])  # the same pixel positions
    assert int((out_image != 0).any(0).sum()) == 16  # Z, dropped, leaves no pixels either


def test_paste_reaches_the_unet_semantic_map_consistently():
    from lib.models.unet import semantic_target

    # source: a garment (category 0) with a sleeve (category 31) on it; target: a garment and a part elsewhere
    source = _target(16, 20, [(0, 10, 0, 10), (2, 5, 2, 5)], [1, 32])
    target = _target(16, 20, [(4, 16, 4, 20), (12, 14, 14, 18)], [5, 30])
    _, t = paste_instances(_image(16, 20, 0), target, _image(16, 20, 1), source, torch.tensor([0, 1]))
    alpha = source["masks"].bool().any(0)
    expected = torch.where(alpha, semantic_target(source["masks"], source["labels"]),
                           semantic_target(target["masks"], target["labels"]))
    assert torch.equal(semantic_target(t["masks"], t["labels"]), expected)
    assert set(expected[alpha].unique().tolist()) == {1, 32} and 5 in expected[~alpha].tolist()


def _two_images():
    a = (_image(16, 20, 0), _target(16, 20, [(0, 8, 0, 8), (8, 16, 10, 20)], [1, 2]))
    b = (_image(16, 20, 1), _target(16, 20, [(0, 6, 12, 20), (10, 14, 0, 6)], [10, 11]))
    return [a, b]


def test_copy_paste_collate_pastes_from_the_other_original_image_and_repeats_with_the_seed():
    batch = _two_images()
    state = torch.get_rng_state()
    for p, items in ((0.0, batch), (1.0, batch[:1])):  # off / a batch of one: collate_fn's lists, no draws
        images, targets = CopyPaste(p)(items)
        assert torch.equal(torch.get_rng_state(), state)
        assert len(images) == len(items) and all(im is b[0] and t is b[1] for im, t, b in zip(images, targets, items))
    pasted_sets = set()
    for seed in range(8):
        torch.manual_seed(seed)
        images, targets = CopyPaste(1.0)(batch)
        torch.manual_seed(seed)
        images2, targets2 = CopyPaste(1.0)(batch)
        assert all(torch.equal(x, y) for x, y in zip(images, images2))
        assert all(torch.equal(x[k], y[k]) for x, y in zip(targets, targets2) for k in ("boxes", "labels", "masks"))
        for i, own, other in ((0, {1, 2}, [10, 11]), (1, {10, 11}, [1, 2])):
            labels = targets[i]["labels"].tolist()
            new = [v for v in labels if v not in own]
            assert new and set(new) <= set(other) and len(labels) == len(set(labels))  # from the original other
            pasted_sets.add(tuple(new))
            for b, m in zip(targets[i]["boxes"], targets[i]["masks"]):
                assert b.tolist() == _box_of(m)
    assert {1, 2} <= {len(p) for p in pasted_sets}  # random non-empty subsets
    with pytest.raises(ValueError, match="probability"):
        CopyPaste(1.5)


def test_lsj_known_answer_fixed_size_and_instances_moved_with_the_image():
    # scale 1: the 16 x 20 image fits 40 x 40 at x2 (32 x 40), padded by 8 rows each side, a random 40-row window
    tf = lsj_transforms(40, scale_range=(1.0, 1.0))
    image = tv_tensors.Image(torch.full((3, 16, 20), 200, dtype=torch.uint8))
    target = _target(16, 20, [(0, 8, 0, 8)], [3])
    offsets = set()
    for seed in range(6):
        torch.manual_seed(seed)
        out, t = image, target
        for f in tf:
            out, t = f(out, t)
        assert out.shape == (3, 40, 40) and t["masks"].shape == (1, 40, 40)
        band = (out[0] == 200).all(1).nonzero().flatten()
        off = int(band[0]) if int(band[0]) > 0 else int(band[-1]) + 1 - 32  # where the image's row 0 lands
        offsets.add(off)
        assert band.tolist() == list(range(max(0, off), min(40, 32 + off)))
        pad = torch.tensor(LSJ_PAD_RGB, dtype=torch.uint8)[:, None]
        outside = torch.ones(40, dtype=torch.bool)
        outside[band] = False
        assert torch.equal(out[:, outside].flatten(1), pad.expand(3, int(outside.sum()) * 40))
        rows = t["masks"][0].any(1).nonzero().flatten().tolist()
        assert rows == list(range(max(0, off), min(40, 16 + off)))  # instance rows 0:8 x2, moved with the image
        assert t["masks"][0].any(0).nonzero().flatten().tolist() == list(range(16))
    assert len(offsets) > 1
    with pytest.raises(ValueError, match="size"):
        lsj_transforms(0)


def test_lsj_on_the_prepared_set_gives_fixed_size_items_with_boxes_on_masks(prepared_set):
    ds = PreparedDataset(prepared_set, "train", build_transforms(True, lsj_size=64))
    raw = PreparedDataset(prepared_set, "train")
    torch.manual_seed(0)
    n_in = n_out = 0
    for i in range(len(ds)):
        image, t = ds[i]
        n = t["masks"].shape[0]
        n_in, n_out = n_in + raw[i][1]["masks"].shape[0], n_out + n
        assert image.shape == (3, 64, 64) and image.dtype == torch.float32
        assert t["masks"].shape == (n, 64, 64) and tuple(t["boxes"].canvas_size) == (64, 64)
        assert t["labels"].shape == (n,) and t["attributes"].shape == (n, 92)
        assert t["masks"].flatten(1).any(1).all()
        for b, m in zip(t["boxes"], t["masks"]):
            assert b.tolist() == _box_of(m)
    assert 0 < n_out <= n_in


def test_loader_with_lsj_and_copy_paste_repeats_from_the_seed(prepared_set):
    ds = PreparedDataset(prepared_set, "train", build_transforms(True, lsj_size=64))

    def epoch(workers):
        loader = make_loader(ds, 3, shuffle=True, workers=workers, seed=7, copy_paste=1.0)
        set_epoch(loader, 0)
        return [(im, t) for images, targets in loader for im, t in zip(images, targets)]

    torch.manual_seed(1)
    a0 = epoch(0)
    torch.manual_seed(1)  # --workers 0: the per-epoch seed of torch's generator (lib/engine.py)
    b0 = epoch(0)
    a2, b2 = epoch(2), epoch(2)  # workers: seeded from the loader's generator
    for a, b in ((a0, b0), (a2, b2)):
        assert len(a) == len(b) == len(ds)
        for (ia, ta), (ib, tb) in zip(a, b):
            assert ia.shape == (3, 64, 64) and torch.equal(ia, ib)
            assert all(torch.equal(ta[k], tb[k]) for k in ("boxes", "labels", "masks", "attributes"))
            for box, m in zip(ta["boxes"], ta["masks"]):
                assert box.tolist() == _box_of(m)


def test_attribute_counts_of_the_annotation_records(prepared_set):
    from lib import prepared as lprepared
    from lib.training_data import attribute_counts

    ds = PreparedDataset(prepared_set, "train")
    counts, totals = attribute_counts(ds, 47)
    want_c, want_t = torch.zeros(47, 92, dtype=torch.long), torch.zeros(47, dtype=torch.long)
    for image_id in ds.image_ids:
        for inst in lprepared.read_ann(prepared_set, image_id)["instances"]:
            want_t[inst["category"] + 1] += 1
            for a in inst.get("attributes", ()):
                want_c[inst["category"] + 1, a] += 1
    assert torch.equal(counts, want_c) and torch.equal(totals, want_t)
    assert totals[0] == 0 and totals.sum() > 0 and counts.sum() > 0
    c2, t2 = attribute_counts(ds, 47, workers=2, chunk=2)  # in worker processes, in chunks: the same sums
    assert torch.equal(c2, counts) and torch.equal(t2, totals)
