"""lib/prepare.py (stage 01): cache contents, resume, bad input, stratified split, real images."""
import shutil

import numpy as np
import pandas as pd
import pytest

from lib import cache, data, io as lio, prepare, rle


def _snapshot(d):
    """Every output file's bytes except meta.json's timing/args (which legitimately differ)."""
    out = {}
    for p in sorted(d.rglob("*")):
        if p.is_file() and p.name != "meta.json":
            out[str(p.relative_to(d))] = p.read_bytes()
    meta = lio.read_json(d / "meta.json")
    for k in ("seconds", "out_dir", "args"):
        meta.pop(k)
    out["meta"] = meta
    return out


def test_cache_matches_decoded_rows_resized(synthetic_data_dir, prepared_cache):
    meta = cache.load_meta(prepared_cache)
    index = cache.load_index(prepared_cache)
    assert meta["num_images"] == len(index) == meta["num_images_selected"] and meta["num_problems"] == 0
    assert set(index["split"]) == {"train", "val"}
    groups, _ = data.index_csv(synthetic_data_dir / "train.csv")
    for image_id in index["image_id"]:
        rec = cache.read_ann(prepared_cache, image_id)
        h, w = rec["height"], rec["width"]
        assert max(h, w) <= 160
        img = data.read_image(cache.image_path(prepared_cache, image_id))
        assert img.shape[:2] == (h, w)
        rows, _ = data.read_rows(synthetic_data_dir / "train.csv", groups[image_id])
        assert len(rows) == len(rec["instances"])
        masks, cats, _ = cache.decode_instances(rec)
        for r, inst, m in zip(rows, rec["instances"], masks):
            want = data.resize_mask(rle.decode(r.rle, (r.height, r.width)), (h, w))
            np.testing.assert_array_equal(m, want)
            assert inst["category"] == r.category and inst["bbox"] == cache.mask_bbox(m)


def test_resume_after_interruption_equals_clean_run(synthetic_data_dir, tmp_path):
    clean = tmp_path / "clean"
    prepare.prepare_dataset(synthetic_data_dir, clean, long_side=128, workers=2, progress=False)
    part = tmp_path / "part"
    prepare.prepare_dataset(synthetic_data_dir, part, long_side=128, workers=1, progress=False, limit=4)
    # an interrupted write leaves at most a temp file and a missing record
    rec = sorted((part / "ann").glob("*.json"))[0]
    rec.unlink()
    (part / "ann" / ".tmp.partial.json").write_text("{")
    (part / "meta.json").unlink()
    prepare.prepare_dataset(synthetic_data_dir, part, long_side=128, workers=2, progress=False)
    (part / "ann" / ".tmp.partial.json").unlink()
    assert _snapshot(part) == _snapshot(clean)


def test_bad_jpeg_and_bad_row_are_reported_and_skipped(synthetic_data_dir, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(synthetic_data_dir, src)
    df = pd.read_csv(src / "train.csv")
    ids = sorted(df["ImageId"].unique())
    broken_img, bad_row_img = ids[0], ids[1]
    jpg = (src / "train" / broken_img).read_bytes()
    (src / "train" / broken_img).write_bytes(jpg[: len(jpg) // 3])
    i = df.index[df["ImageId"] == bad_row_img][0]
    df.loc[i, "EncodedPixels"] = "5 3 1 2"  # unsorted runs
    df.to_csv(src / "train.csv", index=False)
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    out = tmp_path / "out"
    meta = prepare.prepare_dataset(src, out, long_side=128, workers=2, progress=False)
    assert {p: p.read_bytes() for p in src.rglob("*") if p.is_file()} == before  # input untouched
    assert meta["num_images"] == len(ids) - 1 and meta["num_images_skipped"] == 1
    probs = pd.read_csv(out / "problems.csv")
    assert len(probs) == meta["num_problems"] == 2
    p_img = probs[probs["image_id"] == broken_img].iloc[0]
    assert "truncated" in p_img["reason"] and p_img["file"].endswith(broken_img)
    p_row = probs[probs["image_id"] == bad_row_img].iloc[0]
    assert "not sorted" in p_row["reason"] and p_row["row"] == i + 2 and p_row["file"].endswith("train.csv")
    rec = cache.read_ann(out, bad_row_img)
    assert len(rec["instances"]) == int((df["ImageId"] == bad_row_img).sum()) - 1


def test_size_mismatch_reported(synthetic_data_dir, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(synthetic_data_dir, src)
    df = pd.read_csv(src / "train.csv")
    target = sorted(df.loc[df["Height"] != df["Width"], "ImageId"].unique())[0]
    sel = df["ImageId"] == target
    df.loc[sel, ["Height", "Width"]] = df.loc[sel, ["Width", "Height"]].to_numpy()
    df.to_csv(src / "train.csv", index=False)
    meta = prepare.prepare_dataset(src, tmp_path / "out", long_side=128, workers=1, progress=False)
    probs = pd.read_csv(tmp_path / "out" / "problems.csv")
    mism = probs[probs["image_id"] == target]
    assert len(mism) == sel.sum() + 1  # every row, then the image itself
    assert mism["reason"].iloc[:-1].str.contains("disagree with the image .*swapped", regex=True).all()
    assert "skipped" in mism["reason"].iloc[-1]
    assert meta["num_images_skipped"] == 1


def test_stratified_split_covers_categories():
    rng = np.random.default_rng(3)
    cats = {f"i{k:03d}": set(rng.choice(46, size=rng.integers(1, 6), replace=False).tolist()) for k in range(120)}
    cats["rare_a"] = {45}
    cats["rare_b"] = {45}
    split = prepare.stratified_split(cats, 0.1, seed=0)
    assert split == prepare.stratified_split(cats, 0.1, seed=0)
    counts = {c: [0, 0] for c in range(46)}
    for i, cs in cats.items():
        for c in cs:
            counts[c][split[i] == "val"] += 1
    for c, (tr, va) in counts.items():
        if tr + va >= 2:
            assert tr >= 1 and va >= 1, c
    assert 0.05 < sum(v == "val" for v in split.values()) / len(split) < 0.3


def test_missing_inputs_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train.csv not found"):
        prepare.prepare_dataset(tmp_path, tmp_path / "out", progress=False)
    (tmp_path / "train.csv").write_text("ImageId,EncodedPixels,Height,Width,ClassId\n")
    with pytest.raises(FileNotFoundError, match="label file not found"):
        prepare.prepare_dataset(tmp_path, tmp_path / "out", progress=False)


def test_real_images_through_01(shared_data, tmp_path):
    d = shared_data / "real_samples" / "imaterialist2019_train"
    out = tmp_path / "real"
    meta = prepare.prepare_dataset(d, out, long_side=512, workers=2, progress=False,
                                   csv_path=d / "train_derived.csv", image_dir=d,
                                   label_file=shared_data / "imaterialist2019" / "label_descriptions.json")
    assert meta["num_images"] == 10 and meta["num_problems"] == 0 and meta["num_instances"] == 42
    groups, _ = data.index_csv(d / "train_derived.csv")
    for image_id, entries in groups.items():
        rec = cache.read_ann(out, image_id)
        assert max(rec["height"], rec["width"]) == 512
        rows, _ = data.read_rows(d / "train_derived.csv", entries)
        masks, _, _ = cache.decode_instances(rec)
        for r, m in zip(rows, masks):
            want = data.resize_mask(rle.decode(r.rle, (r.height, r.width)), (rec["height"], rec["width"]))
            np.testing.assert_array_equal(m, want)
