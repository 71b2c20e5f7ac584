"""lib/prepared.py (stage 01): prepared-set contents, resume, bad input, stratified split, real images."""
import re
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lib import files as lfiles
from lib import kaggle_data, prepared, rle
from lib.boxes import mask_bbox


def _snapshot(d):
    """Every output file's bytes except meta.json's timing/args (which legitimately differ)."""
    out = {}
    for p in sorted(d.rglob("*")):
        if p.is_file() and p.name != "meta.json":
            out[str(p.relative_to(d))] = p.read_bytes()
    meta = lfiles.read_json(d / "meta.json")
    for k in ("seconds", "out_dir", "args"):
        meta.pop(k)
    out["meta"] = meta
    return out


def test_cache_matches_decoded_rows_resized(synthetic_data_dir, prepared_set):
    meta = prepared.load_meta(prepared_set)
    index = prepared.load_index(prepared_set)
    assert meta["num_images"] == len(index) == meta["num_images_selected"] and meta["num_problems"] == 0
    assert set(index["split"]) == {"train", "val"}
    groups, _ = kaggle_data.index_csv(synthetic_data_dir / "train.csv")
    for image_id in index["image_id"]:
        rec = prepared.read_ann(prepared_set, image_id)
        h, w = rec["height"], rec["width"]
        assert max(h, w) <= 160
        img = kaggle_data.read_image(prepared.image_path(prepared_set, image_id))
        assert img.shape[:2] == (h, w)
        rows, _ = kaggle_data.read_rows(synthetic_data_dir / "train.csv", groups[image_id])
        assert len(rows) == len(rec["instances"])
        masks, cats, _ = prepared.decode_instances(rec)
        for r, inst, m in zip(rows, rec["instances"], masks):
            want = kaggle_data.resize_mask(rle.decode(r.rle, (r.height, r.width)), (h, w))
            np.testing.assert_array_equal(m, want)
            assert inst["category"] == r.category and inst["bbox"] == mask_bbox(m)


def test_write_ground_truth_is_the_records_as_train_csv(prepared_set, tmp_path):
    """A split's ground truth: every instance of each record, images in the order given, at the prepared size;
    what the train.csv reader reads back."""
    ids = prepared.load_index(prepared_set, "val")["image_id"].tolist()[::-1]
    out = tmp_path / "gt.csv"
    n = prepared.write_ground_truth(prepared_set, ids, out)
    want = [(i, inst["rle"], rec["height"], rec["width"], inst["class_id"])
            for i in ids for rec in [prepared.read_ann(prepared_set, i)] for inst in rec["instances"]]
    assert n == len(want) > len(ids) > 1
    gt = pd.read_csv(out, dtype={"ClassId": str})
    assert list(gt.columns) == list(kaggle_data.TRAIN_COLUMNS)
    assert list(gt.itertuples(index=False, name=None)) == want
    groups, problems = kaggle_data.index_csv(out)
    assert problems == [] and list(groups) == ids
    rows, problems = kaggle_data.read_rows(out, groups[ids[0]])
    assert problems == [] and [r.rle for r in rows] == [w[1] for w in want if w[0] == ids[0]]


def test_write_ground_truth_image_without_instances_has_no_row(tmp_path):
    lfiles.atomic_write_json(prepared.ann_path(tmp_path, "a.jpg"), {"height": 4, "width": 6, "instances": []})
    lfiles.atomic_write_json(prepared.ann_path(tmp_path, "b.jpg"), {"height": 4, "width": 6, "instances": [
        {"rle": "1 3", "class_id": "6_7"}]})
    assert prepared.write_ground_truth(tmp_path, ["a.jpg", "b.jpg"], tmp_path / "gt.csv") == 1
    assert (tmp_path / "gt.csv").read_text() == "ImageId,EncodedPixels,Height,Width,ClassId\nb.jpg,1 3,4,6,6_7\n"
    assert prepared.write_ground_truth(tmp_path, [], tmp_path / "none.csv") == 0
    assert (tmp_path / "none.csv").read_text() == "ImageId,EncodedPixels,Height,Width,ClassId\n"


def test_resume_after_interruption_equals_clean_run(synthetic_data_dir, tmp_path):
    clean = tmp_path / "clean"
    prepared.run(prepared.PrepareSettings(
        data_dir=synthetic_data_dir, out_dir=clean, long_side=128, processes=2, progress=False))
    part = tmp_path / "part"
    prepared.run(prepared.PrepareSettings(
        data_dir=synthetic_data_dir, out_dir=part, long_side=128, processes=1, progress=False, limit=4))
    # an interrupted write leaves at most a temp file and a missing record
    rec = sorted((part / "ann").glob("*.json"))[0]
    rec.unlink()
    (part / "ann" / ".tmp.partial.json").write_text("{")
    (part / "meta.json").unlink()
    prepared.run(prepared.PrepareSettings(
        data_dir=synthetic_data_dir, out_dir=part, long_side=128, processes=2, progress=False))
    assert not (part / "ann" / ".tmp.partial.json").exists()  # a killed run's temporary file is removed
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
    meta = prepared.run(prepared.PrepareSettings(
        data_dir=src, out_dir=out, long_side=128, processes=2, progress=False))
    assert {p: p.read_bytes() for p in src.rglob("*") if p.is_file()} == before  # input untouched
    assert meta["num_images"] == len(ids) - 1 and meta["num_images_skipped"] == 1
    probs = pd.read_csv(out / "problems.csv")
    assert len(probs) == meta["num_problems"] == 2
    p_img = probs[probs["image_id"] == broken_img].iloc[0]
    assert "truncated" in p_img["reason"] and p_img["file"].endswith(broken_img)
    p_row = probs[probs["image_id"] == bad_row_img].iloc[0]
    assert "not sorted" in p_row["reason"] and p_row["row"] == i + 2 and p_row["file"].endswith("train.csv")
    rec = prepared.read_ann(out, bad_row_img)
    assert len(rec["instances"]) == int((df["ImageId"] == bad_row_img).sum()) - 1


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGSEGV"])
def test_a_worker_dying_on_an_image_is_a_problem_row_not_a_hang(sig, synthetic_data_dir, tmp_path, monkeypatch):
    """01 --processes 2 with a worker killed (the OOM killer: SIGKILL) or crashing (SIGSEGV) on one image: the
    image is in problems.csv naming the signal, every other image is prepared, and a rerun redoes only it."""
    import signal

    ids = sorted(pd.read_csv(synthetic_data_dir / "train.csv")["ImageId"].unique())
    victim = ids[2]
    real = prepared.prepare_image

    def dies_on_victim(*task):
        if task[2] == victim:
            os.kill(os.getpid(), getattr(signal, sig))
        return real(*task)

    monkeypatch.setattr(prepared, "prepare_image", dies_on_victim)  # the forked workers inherit it
    old = signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("01 hung")))
    signal.alarm(300)
    try:
        out = tmp_path / "out"
        meta = prepared.run(prepared.PrepareSettings(
            data_dir=synthetic_data_dir, out_dir=out, long_side=64, processes=2, progress=False))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert meta["num_images"] == len(ids) - 1
    probs = pd.read_csv(out / "problems.csv")
    row = probs[probs["image_id"] == victim].iloc[0]
    assert f"worker process preparing this image died (killed by {sig}" in row["reason"]
    assert row["file"].endswith(victim)
    monkeypatch.undo()  # the image was fine after all: a rerun prepares it
    meta = prepared.run(prepared.PrepareSettings(
        data_dir=synthetic_data_dir, out_dir=out, long_side=64, processes=2, progress=False))
    assert meta["num_images"] == len(ids) and victim not in set(pd.read_csv(out / "problems.csv")["image_id"])


def test_size_mismatch_reported(synthetic_data_dir, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(synthetic_data_dir, src)
    df = pd.read_csv(src / "train.csv")
    target = sorted(df.loc[df["Height"] != df["Width"], "ImageId"].unique())[0]
    sel = df["ImageId"] == target
    df.loc[sel, ["Height", "Width"]] = df.loc[sel, ["Width", "Height"]].to_numpy()
    df.to_csv(src / "train.csv", index=False)
    meta = prepared.run(prepared.PrepareSettings(
        data_dir=src, out_dir=tmp_path / "out", long_side=128, processes=1, progress=False))
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
    split = prepared.stratified_split(cats, 0.1, seed=0)
    assert split == prepared.stratified_split(cats, 0.1, seed=0)
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
        prepared.run(prepared.PrepareSettings(data_dir=tmp_path, out_dir=tmp_path / "out", progress=False))
    (tmp_path / "train.csv").write_text("ImageId,EncodedPixels,Height,Width,ClassId\n")
    with pytest.raises(FileNotFoundError, match="label file not found"):
        prepared.run(prepared.PrepareSettings(data_dir=tmp_path, out_dir=tmp_path / "out", progress=False))


def test_real_images_through_01(shared_data, tmp_path):
    d = shared_data / "real_samples" / "imaterialist2019_train"
    out = tmp_path / "real"
    meta = prepared.run(prepared.PrepareSettings(
        data_dir=d, out_dir=out, long_side=512, processes=2, progress=False,
        train_csv=d / "train_derived.csv", image_dir=d,
        labels=shared_data / "imaterialist2019" / "label_descriptions.json"))
    assert meta["num_images"] == 10 and meta["num_problems"] == 0 and meta["num_instances"] == 42
    groups, _ = kaggle_data.index_csv(d / "train_derived.csv")
    for image_id, entries in groups.items():
        rec = prepared.read_ann(out, image_id)
        assert max(rec["height"], rec["width"]) == 512
        rows, _ = kaggle_data.read_rows(d / "train_derived.csv", entries)
        masks, _, _ = prepared.decode_instances(rec)
        for r, m in zip(rows, masks):
            want = kaggle_data.resize_mask(rle.decode(r.rle, (r.height, r.width)), (rec["height"], rec["width"]))
            np.testing.assert_array_equal(m, want)


# ------------------------------------------------------------------ reliability (docs/RELIABILITY.md)
import importlib.util  # noqa: E402
import os  # noqa: E402

import cv2  # noqa: E402

from conftest import (REPO, TINY_LONG_SIDE, file_size_limit, kill_when, read_only_dirs_work, run_stage,  # noqa: E402
                      snapshot_files, without_root_override)


def _script01():
    spec = importlib.util.spec_from_file_location("prepare_script", REPO / "01_prepare_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _save(path, rgb, fmt="JPEG", mode=None, exif_orientation=None):
    from PIL import Image

    im = Image.fromarray(rgb)
    if mode:
        im = im.convert(mode)
    kw = {"quality": 95} if fmt == "JPEG" else {}
    if exif_orientation:
        ex = Image.Exif()
        ex[0x0112] = exif_orientation
        kw["exif"] = ex.tobytes()
    im.save(path, fmt, **kw)


def make_bad_data_dir(src, dst):
    """A copy of the synthetic set with one case of every kind of bad (or merely unusual) input.

    Returns (cases, df): ``cases[name] = image_id``, ``df`` the rewritten train.csv (row i = line i + 2).
    """
    shutil.copytree(src, dst)
    df = pd.read_csv(dst / "train.csv", dtype={"ClassId": str})
    ids = sorted(df["ImageId"].unique())
    names = ["png_as_jpg", "grayscale", "cmyk", "png16_as_jpg", "exif_rotated", "truncated", "zero_bytes",
             "missing_file", "exif_size_swapped", "bad_rows"]
    cases = dict(zip(names, ids))
    tr = dst / "train"
    rgb = lambda i: kaggle_data.read_image(tr / i)  # noqa: E731
    _save(tr / cases["png_as_jpg"], rgb(cases["png_as_jpg"]), fmt="PNG")
    _save(tr / cases["grayscale"], rgb(cases["grayscale"]), mode="L")
    _save(tr / cases["cmyk"], rgb(cases["cmyk"]), mode="CMYK")
    img16 = rgb(cases["png16_as_jpg"])[..., ::-1].astype(np.uint16) * 257
    assert cv2.imwrite(str(tr / cases["png16_as_jpg"]) + ".png", img16)
    os.replace(str(tr / cases["png16_as_jpg"]) + ".png", tr / cases["png16_as_jpg"])
    _save(tr / cases["exif_rotated"], rgb(cases["exif_rotated"]), exif_orientation=6)
    blob = (tr / cases["truncated"]).read_bytes()
    (tr / cases["truncated"]).write_bytes(blob[: len(blob) // 2])
    (tr / cases["zero_bytes"]).write_bytes(b"")
    (tr / cases["missing_file"]).unlink()
    swapped = rgb(cases["exif_size_swapped"])  # stored array is H x W; the CSV says the rotated W x H
    _save(tr / cases["exif_size_swapped"], swapped, exif_orientation=6)
    sel = df["ImageId"] == cases["exif_size_swapped"]
    df.loc[sel, ["Height", "Width"]] = df.loc[sel, ["Width", "Height"]].to_numpy()
    # bad rows of an otherwise good image: size disagreeing, RLE past the image, unknown ClassId, a duplicate
    rows = df.index[df["ImageId"] == cases["bad_rows"]]
    assert len(rows) >= 4
    h, w = int(df.at[rows[0], "Height"]), int(df.at[rows[0], "Width"])
    df.loc[rows[0], "Height"] = h + 1
    df.loc[rows[1], "EncodedPixels"] = f"{h * w - 2} 5"
    df.loc[rows[2], "ClassId"] = "46_3"
    df = pd.concat([df.loc[: rows[3]], df.loc[[rows[3]]], df.loc[rows[3] + 1:]]).reset_index(drop=True)
    df.to_csv(dst / "train.csv", index=False)
    return cases, df


def test_bad_data_each_case_reported_and_every_good_image_prepared(synthetic_data_dir, prepared_set, tmp_path,
                                                                   capsys):
    src = tmp_path / "bad"
    cases, df = make_bad_data_dir(synthetic_data_dir, src)
    before = snapshot_files(src)
    out = tmp_path / "out"
    mod = _script01()
    argv = ["--data-dir", str(src), "--out-dir", str(out), "--long-side", str(TINY_LONG_SIDE), "--processes", "1",
            "--no-progress"]
    assert mod.main(mod.get_args_parser().parse_args(argv)) == 0
    summary = capsys.readouterr()
    assert snapshot_files(src) == before  # the input is never modified
    meta = prepared.load_meta(out)
    skipped = ["truncated", "zero_bytes", "missing_file", "exif_size_swapped"]
    n_all = df["ImageId"].nunique()
    assert meta["num_images_skipped"] == len(skipped) and meta["num_images"] == n_all - len(skipped)
    assert f"{len(skipped)} images skipped, {meta['num_problems']} problems" in summary.err
    assert f"prepared {n_all - len(skipped)} of {n_all} images" in summary.out

    probs = pd.read_csv(out / "problems.csv")
    assert len(probs) == meta["num_problems"]

    def reasons(case):
        p = probs[probs["image_id"] == cases[case]]
        return list(zip(p["file"], p["row"], p["reason"]))

    img_file = lambda case: str(src / "train" / cases[case])  # noqa: E731
    first_row = lambda case: int(df.index[df["ImageId"] == cases[case]][0]) + 2  # noqa: E731
    for case, why in [("truncated", "truncated JPEG"), ("zero_bytes", "empty (0 bytes)"),
                      ("missing_file", "image file not found")]:
        (f, row, reason), = reasons(case)
        assert f == img_file(case) and row == first_row(case) and why in reason and "skipped" in reason
    swapped = reasons("exif_size_swapped")
    n_rows = int((df["ImageId"] == cases["exif_size_swapped"]).sum())
    assert len(swapped) == n_rows + 1 and all("swapped" in r for _, _, r in swapped[:-1])
    bad = {row: reason for f, row, reason in reasons("bad_rows")}
    rows = [int(i) + 2 for i in df.index[df["ImageId"] == cases["bad_rows"]]]
    assert len(bad) == 4 and "disagree with the image" in bad[rows[0]] and "past the" in bad[rows[1]]
    assert "unknown category 46" in bad[rows[2]] and bad[rows[4]] == f"duplicate of row {rows[3]}"
    assert all(f.endswith("train.csv") for f, _, _ in reasons("bad_rows"))

    # every good image is prepared, with the masks of a clean run (bad rows dropped)
    for case in ["png_as_jpg", "grayscale", "cmyk", "png16_as_jpg", "exif_rotated", "bad_rows"]:
        got, ref = prepared.read_ann(out, cases[case]), prepared.read_ann(prepared_set, cases[case])
        keep = [i for i in ref["instances"] if i["row"] not in (rows[0], rows[1], rows[2])] \
            if case == "bad_rows" else ref["instances"]
        strip = lambda insts: [{k: v for k, v in i.items() if k != "row"} for i in insts]  # noqa: E731
        assert strip(got["instances"]) == strip(keep), case
        a = kaggle_data.read_image(prepared.image_path(out, cases[case])).astype(int)
        b = kaggle_data.read_image(prepared.image_path(prepared_set, cases[case])).astype(int)
        if case == "grayscale":
            assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
            b = b.mean(axis=2, keepdims=True)
        assert a.shape[:2] == b.shape[:2] and np.abs(a - b).mean() < 6, case
    assert set(df["ImageId"]) == set(cases.values())  # every image of the set is one of the cases

    # --strict: the same run fails (exit 1) because something was skipped
    assert mod.main(mod.get_args_parser().parse_args(argv + ["--strict"])) == 1


def test_bad_train_csv_or_labels_stop_01_with_a_clear_error(tmp_path, synthetic_data_dir, capsys):
    mod = _script01()
    src = tmp_path / "d"
    shutil.copytree(synthetic_data_dir, src, ignore=shutil.ignore_patterns("train", "test"))

    def run():  # exit status 2 and the message, without a traceback
        code = mod.main(mod.get_args_parser().parse_args(
            ["--data-dir", str(src), "--out-dir", str(tmp_path / "out"), "--processes", "1", "--no-progress"]))
        assert code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("01: error: ")
        return err

    (src / "train.csv").write_bytes(b"")
    assert re.search(r"train.csv: file is empty \(expected the header", run())
    (src / "train.csv").write_text("ImageId,EncodedPixels,Height,Width,ClassId\n\n")
    assert re.search(r"train.csv: no data rows", run())
    (src / "train.csv").write_text("ImageId,EncodedPixels,Height,Width,ClassId\na.jpg,1 1,4,4,6\n")
    # no train/ folder: the one image is missing
    assert re.search(r"none of the 1 images could be prepared .*problems.csv", run())
    assert "image file not found" in (tmp_path / "out" / "problems.csv").read_text()
    assert not (tmp_path / "out" / "meta.json").exists()
    (src / "label_descriptions.json").unlink()
    assert re.search("label file not found", run())


def test_image_ids_that_are_paths_or_share_a_stem_are_skipped(tmp_path, synthetic_data_dir):
    src = tmp_path / "d"
    shutil.copytree(synthetic_data_dir, src)
    df = pd.read_csv(src / "train.csv", dtype={"ClassId": str})
    first = sorted(df["ImageId"].unique())[0]
    twin = first.replace(".jpg", ".png")
    shutil.copy(src / "train" / first, src / "train" / twin)
    extra = df[df["ImageId"] == first].assign(ImageId=twin)
    path_id = df[df["ImageId"] == first].assign(ImageId=f"../train/{first}")
    pd.concat([df, extra, path_id]).to_csv(src / "train.csv", index=False)
    meta = prepared.run(prepared.PrepareSettings(
        data_dir=src, out_dir=tmp_path / "out", long_side=64, processes=1, progress=False))
    probs = pd.read_csv(tmp_path / "out" / "problems.csv")
    probs = probs[probs["reason"].str.contains("ImageId")]
    assert meta["num_images_skipped"] == 2 and len(probs) == 2
    assert set(probs["image_id"]) == {twin, f"../train/{first}"}
    assert probs["reason"].str.contains("same file stem|not a plain file name").all()
    assert prepared.read_ann(tmp_path / "out", first)["image_id"] == first


def test_rerun_with_other_settings_redoes_images_and_meta_marks_completion(synthetic_data_dir, tmp_path):
    out = tmp_path / "out"
    prepared.run(prepared.PrepareSettings(
        data_dir=synthetic_data_dir, out_dir=out, long_side=96, processes=1, progress=False))
    prepared.run(prepared.PrepareSettings(
        data_dir=synthetic_data_dir, out_dir=out, long_side=64, processes=1, progress=False))
    index = prepared.load_index(out)
    assert index[["height", "width"]].max().max() == 64  # no record of the 96 px run is reused
    assert all(prepared.read_ann(out, i)["settings"]["long_side"] == 64 for i in index["image_id"])
    (out / "meta.json").unlink()  # what a run killed before its end leaves
    with pytest.raises(FileNotFoundError, match="prepared set is incomplete"):
        prepared.load_index(out)


def _cmd01(src, out, *extra):
    return ["python", REPO / "01_prepare_data.py", "--data-dir", src, "--out-dir", out, "--long-side", "96",
            "--processes", "1", "--no-progress", *extra]


@pytest.mark.parametrize("kills, workers, n_images", [
    pytest.param(4, 1, 0, id="4kills"),
    pytest.param(25, 2, 60, id="25kills-2workers", marks=pytest.mark.long)])
def test_sigkill_during_01_then_rerun_equals_an_uninterrupted_run(synthetic_data_dir, tmp_path, kills, workers,
                                                                  n_images):
    """SIGKILL 01 (its whole process group) at random moments after it starts writing, rerun the same
    command each time, and finally compare every output file with an uninterrupted run."""
    src = synthetic_data_dir
    if n_images:
        from lib import synthetic

        src = tmp_path / "data"
        synthetic.generate_dataset(src, n_train=n_images, n_test=1, seed=1, min_side=256, max_side=384,
                                   progress=False)
    clean, out = tmp_path / "clean", tmp_path / "killed"
    assert run_stage(_cmd01(src, clean)).returncode == 0
    rng = np.random.default_rng(kills)
    hit = 0
    ann = out / "ann"
    for k in range(kills):
        n_before = len(list(ann.glob("*"))) if ann.is_dir() else 0
        ready = lambda: ann.is_dir() and len(list(ann.glob("*"))) > n_before  # noqa: E731
        hit += kill_when(_cmd01(src, out, "--processes", str(workers)), ready, delay=float(rng.uniform(0, 0.02)))
        if (out / "meta.json").exists():
            break
    assert hit >= min(kills // 2, 10)
    r = run_stage(_cmd01(src, out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert _snapshot(out) == _snapshot(clean)
    print(f"01 SIGKILL: {hit} kills of a running 01, then rerun: identical prepared set")


def test_disk_full_during_01_stops_with_a_clear_error_and_keeps_the_prepared_set(synthetic_data_dir, tmp_path):
    clean = tmp_path / "clean"
    assert run_stage(_cmd01(synthetic_data_dir, clean)).returncode == 0
    out = tmp_path / "out"
    shutil.copytree(clean, out)
    for p in sorted((out / "ann").glob("*.json"))[:3]:  # three images still to do
        p.unlink()
    before = snapshot_files(out)
    r = run_stage(_cmd01(synthetic_data_dir, out), preexec_fn=file_size_limit(1500))  # JPEGs are larger
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert "File too large" in last and "cannot write" in last and str(out) in last, last
    after = snapshot_files(out)
    assert not any(".tmp." in k for k in after)  # no temporary file left
    assert {k: v for k, v in after.items() if k != "meta.json"} == \
        {k: v for k, v in before.items() if k != "meta.json"}  # nothing finished was altered
    assert "meta.json" not in after  # the prepared set is not marked complete
    assert run_stage(_cmd01(synthetic_data_dir, out)).returncode == 0  # space again: resumes
    assert _snapshot(out) == _snapshot(clean)


def test_read_only_out_dir_stops_01_with_a_clear_error(synthetic_data_dir, tmp_path):
    if not read_only_dirs_work(tmp_path):
        pytest.skip("directory permissions do not bind this user here (root without a droppable "
                    "CAP_DAC_OVERRIDE)")
    out = tmp_path / "out"
    assert run_stage(_cmd01(synthetic_data_dir, out)).returncode == 0
    for p in sorted((out / "ann").glob("*.json"))[:2]:
        p.unlink()
    before = snapshot_files(out)
    for d in (out, out / "ann", out / "images"):
        d.chmod(0o555)
    try:
        r = run_stage(_cmd01(synthetic_data_dir, out), preexec_fn=without_root_override())
    finally:
        for d in (out, out / "ann", out / "images"):
            d.chmod(0o755)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert "Permission denied" in last and "is not writable" in last and str(out) in last, last
    assert snapshot_files(out) == before


def test_a_second_01_on_the_same_out_dir_is_refused_while_one_runs(synthetic_data_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    held = lfiles.lock_dir(out, "01_prepare_data run")  # what a running 01 (or its orphaned workers) holds
    try:
        with pytest.raises(RuntimeError, match="in use by another 01_prepare_data run"):
            prepared.run(prepared.PrepareSettings(
                data_dir=synthetic_data_dir, out_dir=out, long_side=64, processes=1, progress=False))
        assert [p.name for p in out.iterdir()] == [".lock"]  # nothing touched
    finally:
        held.close()


def test_2020_edition_prepares_like_2019(tmp_path):
    """The generator's 2020 layout (ClassId the category, sparse attribute ids in AttributesIds, its own label
    file) prepares to the same records as the 2019 layout of the same seed: attributes mapped by name."""
    from lib import synthetic

    a, b = tmp_path / "d2019", tmp_path / "d2020"
    synthetic.generate_dataset(a, n_train=6, n_test=1, seed=5, min_side=96, max_side=160, progress=False)
    synthetic.generate_dataset(b, n_train=6, n_test=1, seed=5, min_side=96, max_side=160, progress=False,
                               edition="2020")
    assert (b / "train.csv").read_text().startswith("ImageId,EncodedPixels,Height,Width,ClassId,AttributesIds\n")
    assert kaggle_data.csv_layout(b / "train.csv") == "2020" and '"' in (b / "train.csv").read_text()
    ma = prepared.run(prepared.PrepareSettings(
        data_dir=a, out_dir=tmp_path / "p2019", long_side=128, processes=1, progress=False))
    mb = prepared.run(prepared.PrepareSettings(
        data_dir=b, out_dir=tmp_path / "p2020", long_side=128, processes=1, progress=False))
    assert mb["num_problems"] == 0 and mb["num_images"] == ma["num_images"] == 6
    assert mb["sources"][0]["edition"] == "2020" and mb["sources"][0]["attribute_vocabulary"]["mapped"] == 92
    assert mb["labels"] == ma["labels"]  # the prepared set speaks the 2019 labels either way
    with_attributes = 0
    for image_id in prepared.load_index(tmp_path / "p2019")["image_id"]:
        ra, rb = (prepared.read_ann(tmp_path / d, image_id)["instances"] for d in ("p2019", "p2020"))
        assert ra == rb
        with_attributes += sum(bool(i["attributes"]) for i in rb)
    assert with_attributes > 0  # the sparse ids did map back
    with pytest.raises(FileNotFoundError, match="2020 edition's train.csv"):
        (b / "label_descriptions.json").unlink()
        prepared.run(prepared.PrepareSettings(
            data_dir=b, out_dir=tmp_path / "p2020b", long_side=128, processes=1, progress=False))


def test_the_same_image_file_under_two_ids_is_prepared_once(synthetic_data_dir, tmp_path):
    d = tmp_path / "data"
    shutil.copytree(synthetic_data_dir, d)
    lines = (d / "train.csv").read_text().splitlines()
    first_id = lines[1].split(",")[0]
    shutil.copyfile(d / "train" / first_id, d / "train" / "zz_copy.jpg")  # sorts after every hex id
    copies = [l.replace(first_id, "zz_copy.jpg", 1) for l in lines[1:] if l.startswith(first_id + ",")]
    (d / "train.csv").write_text("\n".join(lines + copies) + "\n")
    meta = prepared.run(prepared.PrepareSettings(
        data_dir=d, out_dir=tmp_path / "out", long_side=128, processes=1, progress=False))
    index = prepared.load_index(tmp_path / "out")
    assert first_id in set(index["image_id"]) and "zz_copy.jpg" not in set(index["image_id"])
    assert meta["num_images"] == meta["num_images_selected"] - 1
    problems = pd.read_csv(tmp_path / "out" / "problems.csv")
    assert problems["reason"].str.contains(f"the same image file as '{first_id}'").sum() == 1
    kept = prepared.run(prepared.PrepareSettings(
        data_dir=d, out_dir=tmp_path / "kept", long_side=128, processes=1, progress=False,
        keep_duplicate_files=True))  # what benchmarks that replicate images ask for
    assert kept["num_images"] == meta["num_images"] + 1


def test_2020_image_ids_without_jpg_find_their_images(tmp_path):
    """The 2020 edition's train.csv names its images without .jpg (the file is train/<id>.jpg): every image is
    prepared under the id as written."""
    from lib import synthetic

    data = tmp_path / "d2020"
    synthetic.generate_dataset(data, n_train=3, n_test=1, seed=1, min_side=64, max_side=96, progress=False,
                               edition="2020")
    csv_path = data / "train.csv"
    csv_path.write_text(re.sub(r"^([0-9a-f]+)\.jpg,", r"\1,", csv_path.read_text(), flags=re.M))
    m = prepared.run(prepared.PrepareSettings(
        data_dir=data, out_dir=tmp_path / "p", long_side=64, processes=1, progress=False))
    assert m["num_images"] == 3 and m["num_problems"] == 0
    ids = prepared.load_index(tmp_path / "p")["image_id"].tolist()
    assert len(ids) == 3 and not any(i.endswith(".jpg") for i in ids)
    assert all(prepared.image_path(tmp_path / "p", i).is_file() for i in ids)


def test_prepare_settings_sources():
    """01's settings: no --data-dir and no --coco-json is the synthetic set; COCO files alone have no Kaggle
    source; each --coco-json file gets its --coco-images folder, or None (the file's folder)."""
    assert prepared.PrepareSettings().data_dir == Path("data/synthetic")
    s = prepared.PrepareSettings(coco_json=[Path("a.json"), Path("b.json")], coco_images=[Path("imgs")])
    assert s.data_dir is None and s.coco_sources() == [(Path("a.json"), Path("imgs")), (Path("b.json"), None)]
    with pytest.raises(ValueError, match="--coco-images: 2 folders for 1 --coco-json files"):
        prepared.PrepareSettings(coco_json=["a.json"], coco_images=["x", "y"])


def test_records_written_before_the_format_version_key_was_renamed_still_count_as_done():
    now = prepared.record_settings(128, 95)
    assert now == {"format_version": prepared.FORMAT_VERSION, "long_side": 128, "jpeg_quality": 95}
    assert prepared._same_settings({"cache_version": prepared.FORMAT_VERSION, "long_side": 128, "jpeg_quality": 95}, now)
    assert not prepared._same_settings({"cache_version": 0, "long_side": 128, "jpeg_quality": 95}, now)
    assert not prepared._same_settings({"format_version": prepared.FORMAT_VERSION, "long_side": 64,
                                        "jpeg_quality": 95}, now)
    assert not prepared._same_settings(None, now)
