"""lib/submission_file.py and 06_make_submission.py: building, validating and writing submission.csv; 06 end to end."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import fuzz_sizes, run_stage, snapshot_files
from lib import prediction_table as lpred
from lib import rle as lrle
from lib import submission_file as lsub
from lib.fusion import Combination
from lib.kaggle_data import SUBMISSION_COLUMNS, list_test_images
from lib.labels import parse_class_id

REPO = Path(__file__).resolve().parents[1]
S = 32  # mask side of most tests
from test_postprocess import images_df, pred_rows, rect, table  # noqa: E402



def test_build_submission_in_worker_processes_gives_the_same_file():
    rng = np.random.default_rng(0)
    rows, ids = [], [f"{i:03d}.jpg" for i in range(30)]
    for i in ids[::2]:  # every other image has instances, the rest get placeholders
        masks = [rect(*rng.integers(0, 12, 2), *rng.integers(14, 32, 2)) for _ in range(4)]
        rows += pred_rows(i, masks, list(rng.integers(0, 3, 4)), list(rng.uniform(0.3, 1, 4)))
    t, imgs = table(rows), images_df(ids)
    one = lsub.build_submission(t, imgs, mask_size=S, progress=False)
    many = lsub.build_submission(t, imgs, mask_size=S, progress=False, workers=2)
    pd.testing.assert_frame_equal(one, many)
    assert list(dict.fromkeys(one["ImageId"])) == ids  # image order kept
    assert (one["EncodedPixels"] == "1 1").sum() == 15 and lsub.validate_submission(many, ids, S) == []


def test_a_worker_dying_on_a_test_image_stops_06_naming_it(monkeypatch, tmp_path):
    """06 --processes 2 with a worker killed on one image: an error naming that image, not a hang."""
    import os
    import signal

    from lib.table_stream import read_sources

    rows, ids = [], [f"{i:03d}.jpg" for i in range(12)]
    for i in ids:
        rows += pred_rows(i, [rect(2, 2, 20, 20)], [1], [0.9])
    table(rows).to_parquet(tmp_path / "predictions.parquet")
    sources, indexes, _ = read_sources([tmp_path])
    real = lsub.image_rows

    def dies_on_007(image_id, *args):
        if image_id == "007.jpg":
            os.kill(os.getpid(), signal.SIGKILL)
        return real(image_id, *args)

    monkeypatch.setattr(lsub, "image_rows", dies_on_007)  # the forked workers inherit it
    old = signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("06 hung")))
    signal.alarm(120)
    try:
        with pytest.raises(RuntimeError, match=r"a worker process died on submission image 007\.jpg: killed by SIGKILL"):
            lsub.submission_of_sources(sources, indexes, Combination.default([sources[0].name]), images_df(ids),
                                       mask_size=S, processes=2, progress=False)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_build_submission_placeholders_order_and_sizes():
    t = table(pred_rows("b.jpg", [rect(2, 2, 20, 20), rect(0, 0, 32, 32)], [4, 5], [0.9, 0.2]),
              pred_rows("zzz.jpg", [rect(2, 2, 20, 20)], [4], [0.9]))  # not a test image: ignored
    imgs = images_df(["a.jpg", "b.jpg", "c.jpg"])
    sub = lsub.build_submission(t, imgs, mask_size=S, progress=False)
    assert list(sub.columns) == list(SUBMISSION_COLUMNS)
    assert sub["ImageId"].tolist() == ["a.jpg", "b.jpg", "c.jpg"]
    assert sub.iloc[0].tolist() == ["a.jpg", "1 1", "0"] and sub.iloc[2].tolist() == ["c.jpg", "1 1", "0"]
    np.testing.assert_array_equal(lrle.decode(sub.iloc[1]["EncodedPixels"], (S, S)), rect(2, 2, 20, 20))
    assert lsub.validate_submission(sub, imgs["image_id"], S) == []
    # Original size: the 32x32 stored mask is resized to each image's 64x48.
    sub = lsub.build_submission(t, imgs, mask_size=None, progress=False)
    m = lrle.decode(sub.iloc[1]["EncodedPixels"], (64, 48))
    assert m[4:40, 3:30].all() and m.sum() == pytest.approx(36 * 27, rel=0.15)
    sizes = {i: (64, 48) for i in imgs["image_id"]}
    assert lsub.validate_submission(sub, imgs["image_id"], None, sizes) == []
    assert lsub.validate_submission(sub, imgs["image_id"], 32) != []  # runs past a 32x32 mask


GOOD = [("a.jpg", "1 3 40 2", "6"), ("a.jpg", "5 3", "6"), ("a.jpg", "1 10", "7_1_2"), ("b.jpg", "1 1", "0")]


def csv_text(rows, header="ImageId,EncodedPixels,ClassId"):
    return "\n".join([header] + [",".join(r) for r in rows]) + "\n"


@pytest.mark.parametrize("bad,message", [
    (("a.jpg", "1 2 3", "6"), "line 6 (a.jpg): bad EncodedPixels: RLE has an odd number"),
    (("a.jpg", "1 x", "6"), "line 6 (a.jpg): bad EncodedPixels: RLE token 'x' is not a non-negative integer"),
    (("a.jpg", "900 2 100 2", "9"), "line 6 (a.jpg): bad EncodedPixels: RLE runs are not sorted"),
    (("a.jpg", "1020 10", "9"), "line 6 (a.jpg): bad EncodedPixels: RLE run ends at pixel 1029, past the 32x32"),
    (("a.jpg", "", "9"), "line 6 (a.jpg): empty EncodedPixels"),
    (("a.jpg", "2 2", "6"), "line 2 and line 6 (a.jpg): masks of category 6 overlap by 2 pixels"),
    (("a.jpg", "2 2", "6_3"), "line 2 and line 6 (a.jpg): masks of category 6 overlap by 2 pixels"),
    (("x.jpg", "1 1", "0"), "line 6 (x.jpg): ImageId is not a test image"),
    (("a.jpg", "100 1", "46"), "line 6 (a.jpg): bad ClassId: ClassId '46': unknown category 46"),
    (("a.jpg", "100 1", "shirt"), "line 6 (a.jpg): bad ClassId"),
    (("a.jpg", "1 3 40 2", "6"), "line 6 (a.jpg): duplicate of line 2"),
])
def test_validator_rejects_each_malformed_row(tmp_path, bad, message):
    path = tmp_path / "sub.csv"
    path.write_text(csv_text(GOOD + [bad]))
    problems = lsub.validate_submission(path, ["a.jpg", "b.jpg"], S)
    assert len(problems) == 1 and problems[0].startswith(message), problems
    # The same rows as a DataFrame give the same messages (row i is line i + 2).
    df = pd.DataFrame(GOOD + [bad], columns=list(SUBMISSION_COLUMNS))
    assert lsub.validate_submission(df, ["a.jpg", "b.jpg"], S) == problems


def test_validator_accepts_a_correct_file_and_reports_missing_and_header(tmp_path):
    path = tmp_path / "sub.csv"
    path.write_text(csv_text(GOOD))
    assert lsub.validate_submission(path, ["a.jpg", "b.jpg"], S) == []
    assert lsub.validate_submission(path, ["a.jpg", "b.jpg", "c.jpg"], S) == [
        "ImageId c.jpg: missing (every test image needs at least one row)"]
    # Columns swapped: reported, and the rows are still checked by column name.
    path.write_text(csv_text([(i, c, e) for i, e, c in GOOD + [("b.jpg", "1 1 1 1", "3")]],
                             header="ImageId,ClassId,EncodedPixels"))
    assert lsub.validate_submission(path, ["a.jpg", "b.jpg"], S) == [
        "header: expected 'ImageId,EncodedPixels,ClassId', got 'ImageId,ClassId,EncodedPixels'",
        "line 6 (b.jpg): bad EncodedPixels: RLE runs are not sorted: start 1 (pair 1) follows start 1"]
    path.write_text(csv_text([r[:2] for r in GOOD], header="ImageId,EncodedPixels"))
    problems = lsub.validate_submission(path, ["a.jpg", "b.jpg"], S)
    assert problems[0].startswith("header: expected") and "cannot check the rows" in problems[1]
    path.write_text("")
    assert "file is empty" in lsub.validate_submission(path, ["a.jpg"], S)[0]


def test_validator_reports_every_problem_of_a_file(tmp_path):
    rows = [("a.jpg", "1 3", "6"), ("a.jpg", "1 3 5", "6"), ("a.jpg", "2 2", "6"), ("a.jpg", "9 1", "99"),
            ("q.jpg", "3 1 1 1", "1"), ("a.jpg", "1 3", "6"), ("a.jpg", "1024 2", "2")]
    path = tmp_path / "sub.csv"
    path.write_text(csv_text(rows) + "a.jpg,1 1\n")
    problems = lsub.validate_submission(path, ["a.jpg", "b.jpg"], S)
    assert problems == [
        "line 3 (a.jpg): bad EncodedPixels: RLE has an odd number of tokens (3): starts and lengths must pair up",
        "line 5 (a.jpg): bad ClassId: ClassId '99': unknown category 99 (ids are 0-45)",
        "line 6 (q.jpg): ImageId is not a test image",
        "line 6 (q.jpg): bad EncodedPixels: RLE runs are not sorted: start 1 (pair 1) follows start 3",
        "line 7 (a.jpg): duplicate of line 2",
        "line 8 (a.jpg): bad EncodedPixels: RLE run ends at pixel 1025, past the 32x32 mask (1024 pixels)",
        "line 9 (a.jpg): expected 3 fields, got 2",
        "line 2 and line 4 (a.jpg): masks of category 6 overlap by 2 pixels",
        "ImageId b.jpg: missing (every test image needs at least one row)",
    ]


def test_write_submission_refuses_invalid_and_writes_valid(tmp_path):
    out = tmp_path / "sub" / "submission.csv"
    bad = pd.DataFrame([("a.jpg", "1 2 3", "6"), ("a.jpg", "1 1", "60")], columns=list(SUBMISSION_COLUMNS))
    with pytest.raises(lsub.SubmissionError) as e:
        lsub.write_submission(bad, out, ["a.jpg", "b.jpg"], S)
    assert len(e.value.problems) == 3 and "odd number" in str(e.value) and "b.jpg: missing" in str(e.value)
    assert isinstance(e.value, ValueError)
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))
    good = pd.DataFrame(GOOD, columns=list(SUBMISSION_COLUMNS))
    lsub.write_submission(good, out, ["a.jpg", "b.jpg"], S)
    assert out.read_text() == csv_text(GOOD)
    assert lsub.validate_submission(out, ["a.jpg", "b.jpg"], S) == []
    assert [p.name for p in out.parent.iterdir()] == ["submission.csv"]


@st.composite
def random_tables(draw):
    n_img = draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    rows, ids = [], [f"img{i}.jpg" for i in range(n_img)]
    for image_id in ids[: draw(st.integers(0, n_img))]:
        mh, mw = draw(st.sampled_from([(16, 16), (24, 40), (32, 32)]))
        for _ in range(draw(st.integers(0, 6))):
            m = np.zeros((mh, mw), np.float32)
            y0, x0 = rng.integers(0, mh), rng.integers(0, mw)
            h, w = rng.integers(1, mh - y0 + 1), rng.integers(1, mw - x0 + 1)
            m[y0:y0 + h, x0:x0 + w] = rng.random((h, w))
            rows += pred_rows(image_id, [m], [rng.integers(0, 4)], [rng.random()], orig=(20, 30),
                              attrs=rng.random((1, 92)))
    params = dict(score_thresh=draw(st.sampled_from([0.0, 0.3, 0.5])),
                  mask_thresh=draw(st.sampled_from([0.0, 0.2, 0.45])),
                  nms_iou=draw(st.sampled_from([0.0, 0.3, 1.0])), min_area=draw(st.sampled_from([0, 1, 5])),
                  attributes=draw(st.sampled_from(["off", "on"])))
    return lpred.make_table(rows), images_df(ids, 20, 30), params, draw(st.sampled_from([FZ_S, 16, 32, None]))


@pytest.mark.parametrize("n", fuzz_sizes(ci=50))
def test_property_build_submission_always_validates(n, tmp_path_factory):
    """Random prediction tables and post-processing parameters: the submission built from them is valid,
    and so is the file write_submission writes (checked again from disk by an independent reading)."""
    d = tmp_path_factory.mktemp("prop")
    seen = {"cases": 0, "rows": 0, "placeholders": 0}

    @settings(max_examples=n, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(random_tables())
    def check(case):
        t, imgs, params, mask_size = case
        sub = lsub.build_submission(t, imgs, params, mask_size, progress=False)
        sizes = {i: (20, 30) for i in imgs["image_id"]}
        assert lsub.validate_submission(sub, imgs["image_id"], mask_size, sizes) == []
        assert set(sub["ImageId"]) == set(imgs["image_id"])
        path = lsub.write_submission(sub, d / "submission.csv", imgs["image_id"], mask_size, sizes)
        assert lsub.validate_submission(path, imgs["image_id"], mask_size, sizes) == []
        if mask_size == FZ_S:
            assert reference_valid(path.read_bytes(), list(imgs["image_id"]), FZ_S)
        seen["cases"] += 1
        seen["rows"] += len(sub)
        seen["placeholders"] += int((sub["ClassId"] == lsub.PLACEHOLDER[1]).sum())

    check()
    assert seen["cases"] >= n and seen["rows"] > seen["placeholders"] > 0
    print(f"written submissions validate: {seen}")


# ------------------------------------------------------------------ mask sizes and the editions' ImageIds


def test_mask_size_forms_and_shapes():
    assert [lsub.parse_mask_size(v) for v in (512, "512", " 64 ", 0, "0", None, "original", "long:1024",
                                               np.int64(8))] == [512, 512, 64, 0, 0, 0, 0, "long:1024", 8]
    for bad in ("long:0", "long:", "long:x", "x", "-1", -1, True, 51.2, "1024long", "long:1024 px", ""):
        with pytest.raises(ValueError, match="mask size .*: expected N"):
            lsub.parse_mask_size(bad)
    assert lsub.EDITION_MASK_SIZES == {"2019": 512, "2020": "long:1024"}
    assert lsub.mask_shape(512, 3008, 2000) == (512, 512)
    assert lsub.mask_shape(0, 3008, 2000) == lsub.mask_shape(None, 3008, 2000) == (3008, 2000)
    assert lsub.mask_shape("long:1024", 3008, 2000) == (1024, 680)  # 2000 * 1024 / 3008 = 680.9, floored
    assert lsub.mask_shape("long:1024", 2000, 3008) == (680, 1024)
    assert lsub.mask_shape("long:1024", 600, 800) == (768, 1024)  # exactly 768: not 767 by float rounding
    assert lsub.mask_shape("long:1024", 300, 300) == (1024, 1024)  # a small image grows
    assert lsub.mask_shape("long:1024", 5000, 1) == (1024, 1)  # never an empty side


def test_long_side_frame_is_the_2020_solutions_resize():
    """``long:1024`` is the frame the public 2020 solutions encode their masks in; their formula
    (apls777/kaggle-imaterialist2020-model, mask_rcnn/submission.py: the long side 1024, the short one
    ``int(short / (long / 1024))``) gives the same shape for every size."""
    rng = np.random.default_rng(0)
    for h, w in rng.integers(1, 6000, (3000, 2)).tolist() + [[600, 800], [768, 1024], [3008, 2000], [7, 7]]:
        want = (int(h / (w / 1024)), 1024) if w > h else (1024, int(w / (h / 1024)))
        assert lsub.mask_shape("long:1024", h, w) == (max(1, want[0]), max(1, want[1])), (h, w)


def test_build_and_validate_at_the_long_side_frame():
    t = table(pred_rows("b", [rect(4, 0, 20, 16)], [4], [0.9]),  # stored 32x32, image 64x48
              pred_rows("c", [rect(0, 0, 64, 48, hw=(64, 48))], [6], [0.9]))
    imgs = images_df(["a", "b", "c"])
    sizes = {i: (64, 48) for i in imgs["image_id"]}
    sub = lsub.build_submission(t, imgs, mask_size="long:32", progress=False)
    assert sub["ImageId"].tolist() == ["a", "b", "c"] and sub.iloc[0].tolist() == ["a", "1 1", "0"]
    m = lrle.decode(sub.iloc[1]["EncodedPixels"], (32, 24))  # 64x48 with its long side at 32
    assert m[5:19, 1:11].all() and m.sum() == pytest.approx(16 * 12, rel=0.15)
    assert lrle.decode(sub.iloc[2]["EncodedPixels"], (32, 24)).all()  # the whole frame, no more
    assert lsub.validate_submission(sub, imgs["image_id"], "long:32", sizes) == []
    with pytest.raises(ValueError, match="image_sizes is needed for masks at long:32"):
        lsub.validate_submission(sub, imgs["image_id"], "long:32")
    # The same predictions written at the original size: their runs end past the 32x24 frame.
    full = lsub.build_submission(t, imgs, mask_size=0, progress=False)
    assert lsub.validate_submission(full, imgs["image_id"], 0, sizes) == []
    assert lsub.validate_submission(full, imgs["image_id"], "long:32", sizes) == [
        "line 3 (b): bad EncodedPixels: RLE run ends at pixel 1512, past the 32x24 mask (768 pixels)",  # 40x24 box
        "line 4 (c): bad EncodedPixels: RLE run ends at pixel 3072, past the 32x24 mask (768 pixels)"]


def test_a_2020_row_past_its_image_is_refused_naming_the_line(tmp_path):
    """06 --validate checked every file at 512 x 512, so a 2020 row written at the original size whose runs end
    far past its image's Height x Width passed. At the size the file was written at, it is refused."""
    path = tmp_path / "submission.csv"
    path.write_text("ImageId,EncodedPixels,ClassId,AttributesIds\n"
                    'abc,1 5,6,"115,136"\n'
                    "abc,590 20000,31,\n"  # ends at pixel 20589 of a 20x30 image (600 pixels)
                    "def,1048570 10,0,\n")  # ends past even the 1024x1024 frame of a 10x10 image
    ids, sizes = ["abc", "def"], {"abc": (20, 30), "def": (10, 10)}
    assert lsub.validate_submission(path, ids, 512, sizes)[0].startswith("line 4 (def)")  # abc's passed
    assert lsub.validate_submission(path, ids, 0, sizes) == [
        "line 3 (abc): bad EncodedPixels: RLE run ends at pixel 20589, past the 20x30 mask (600 pixels)",
        "line 4 (def): bad EncodedPixels: RLE run ends at pixel 1048579, past the 10x10 mask (100 pixels)"]
    assert lsub.validate_submission(path, ids, "long:1024", sizes) == [
        "line 4 (def): bad EncodedPixels: RLE run ends at pixel 1048579, past the 1024x1024 mask (1048576 pixels)"]


def test_the_size_a_file_was_written_at(tmp_path):
    """--validate checks a file at the size given, else at the one 06's meta.json beside it records, else at
    its edition's."""
    import json

    sub, meta = tmp_path / "submission.csv", tmp_path / "meta.json"
    sub.write_text("ImageId,EncodedPixels,ClassId\n")
    assert lsub.written_mask_size(sub, None, "2020") == ("long:1024", "the 2020 edition's")
    assert lsub.written_mask_size(sub, None, "2019") == (512, "the 2019 edition's")
    for written, read in ((None, 0), (0, 0), (512, 512), ("long:1024", "long:1024")):
        meta.write_text(json.dumps({"stage": "06_make_submission", "mask_size": written}))
        assert lsub.written_mask_size(sub, None, "2019") == (read, str(meta))
    assert lsub.written_mask_size(sub, "512", "2020") == (512, "--mask-size")  # given: it wins
    assert lsub.written_mask_size(sub, 0, "2020") == (0, "--mask-size")
    assert lsub.written_mask_size(tmp_path / "copy.csv", None, "2020")[0] == "long:1024"  # meta.json is not its
    meta.write_text(json.dumps({"stage": "05_predict", "mask_size": 512}))  # 05's: the size it stored
    assert lsub.written_mask_size(sub, None, "2020")[0] == "long:1024"
    meta.write_text(json.dumps({"stage": "06_make_submission", "mask_size": "big"}))
    with pytest.raises(ValueError, match=r"meta\.json: mask size 'big'"):
        lsub.written_mask_size(sub, None, "2020")
    meta.write_text("{")
    with pytest.raises(ValueError, match=r"meta\.json: not valid JSON"):
        lsub.written_mask_size(sub, None, "2020")


@pytest.mark.parametrize("listed,written", [(["abc", "def"], "def.jpg"), (["abc.jpg", "def.jpg"], "def")])
def test_validator_names_an_imageid_in_the_other_form(listed, written):
    """Kaggle matches ImageIds as the test list writes them: a row in the other form (with or without .jpg)
    is refused, naming the id it should be."""
    sizes = {i: (20, 30) for i in listed}
    df = pd.DataFrame([(listed[0], "1 5", "6", ""), (listed[1], "1 1", "0", "")],
                      columns=["ImageId", "EncodedPixels", "ClassId", "AttributesIds"])
    assert lsub.validate_submission(df, listed, "long:1024", sizes) == []
    df.loc[1, "ImageId"] = written
    assert lsub.validate_submission(df, listed, "long:1024", sizes) == [
        f"line 3 ({written}): ImageId is not a test image; {listed[1]!r} is (write the ImageIds as the test image "
        f"list does)", f"ImageId {listed[1]}: missing (every test image needs at least one row)"]


def test_real_test_image_listed_the_2020_way_and_its_frame(tmp_path):
    """A real test image listed as the 2020 edition lists it (no .jpg): found, its real size read, and a row
    checked against its long:1024 frame (1024 x 680 for 3008 x 2000) down to the last pixel."""
    f = REPO.parent / "shared" / "data" / "real_samples" / "imaterialist2019_test" / \
        "00a8764cff12b2e849c850f4be5608bc.jpg"
    if not f.is_file():
        pytest.skip(f"real sample image not found: {f} (../shared/data beside the repo)")
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / f.name).symlink_to(f)
    (tmp_path / "sample_submission.csv").write_text(f"ImageId,EncodedPixels,ClassId,AttributesIds\n{f.stem},1 1,0,\n")
    imgs = list_test_images(tmp_path, progress=False)
    assert imgs.values.tolist() == [[f.stem, 3008, 2000]] and lsub.submission_edition(tmp_path) == "2020"
    size = lsub.EDITION_MASK_SIZES["2020"]
    assert lsub.mask_shape(size, 3008, 2000) == (1024, 680)
    sizes = {f.stem: (3008, 2000)}
    row = pd.DataFrame([(f.stem, f"{1024 * 680 - 9} 10", "6", "")],
                       columns=["ImageId", "EncodedPixels", "ClassId", "AttributesIds"])
    assert lsub.validate_submission(row, [f.stem], size, sizes) == []
    row.loc[0, "EncodedPixels"] = f"{1024 * 680 - 8} 10"
    assert lsub.validate_submission(row, [f.stem], size, sizes) == [
        f"line 2 ({f.stem}): bad EncodedPixels: RLE run ends at pixel 696321, past the 1024x680 mask "
        f"(696320 pixels)"]


# ------------------------------------------------------------------ fuzzing and safety (docs/RELIABILITY.md)
FZ_IDS = ["a.jpg", "b.jpg", "c.jpg"]  # test images of the fuzzed submissions
FZ_S = 8  # their mask side


def reference_valid(blob: bytes, expected=FZ_IDS, s=FZ_S) -> bool:
    """Independent reading of the submission rules on raw bytes: pixel arrays, not runs, for overlaps."""
    try:
        text = blob.decode("utf-8-sig")
    except UnicodeDecodeError:
        return False
    old = csv.field_size_limit(2**31 - 1)
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error:
        return False
    finally:
        csv.field_size_limit(old)
    if not rows or rows[0] != ["ImageId", "EncodedPixels", "ClassId"]:
        return False
    seen, present, taken = set(), set(), {}
    for fields in rows[1:]:
        if not fields or all(not f.strip() for f in fields):
            continue
        if len(fields) != 3:
            return False
        image_id, enc, cls = fields[0], fields[1].strip(), fields[2]
        if image_id != image_id.strip() or cls != cls.strip() or image_id not in expected \
                or (image_id, enc, cls) in seen:
            return False
        seen.add((image_id, enc, cls))
        present.add(image_id)
        try:
            cat = parse_class_id(cls)[0]
            m = lrle.decode(enc, (s, s)).astype(bool)
        except ValueError:
            return False
        if not m.any():
            return False
        canvas = taken.setdefault((image_id, cat), np.zeros((s, s), bool))
        if (canvas & m).any():
            return False
        canvas |= m
    return present == set(expected)


@st.composite
def submission_files(draw):
    """Bytes of a submission CSV for FZ_IDS at FZ_S x FZ_S: mostly well formed, with random defects."""
    rows = []
    for image_id in FZ_IDS:
        if draw(st.integers(0, 19)) == 0:
            continue  # a missing image
        for _ in range(draw(st.integers(1, 3))):
            m = np.zeros((FZ_S, FZ_S), np.uint8)
            y0, x0 = draw(st.integers(0, FZ_S - 1)), draw(st.integers(0, FZ_S - 1))
            m[y0:draw(st.integers(y0 + 1, FZ_S)), x0:draw(st.integers(x0 + 1, FZ_S))] = 1
            cls = draw(st.sampled_from(["0", "1", "6", "31", "6_3_7", "1_0"]))
            rows.append([image_id, lrle.encode(m), cls])
    for r in rows:
        if draw(st.integers(0, 6)) == 0:
            i = draw(st.integers(0, 2))
            r[i] = draw(st.one_of(
                st.sampled_from(["", " a.jpg", "a.jpg ", "d.jpg", " 6", "1\t", "1 2 3", "65 1", "3 1 1 1", "1 0", "0 1",
                                 "x", "46", "6_92", "6_3_3", '"', '1 1"', "1,1", "1\n1", "\u0661 1"]),
                st.text(max_size=6)))
    if rows and draw(st.integers(0, 9)) == 0:
        rows.append(list(draw(st.sampled_from(rows))))  # a duplicate row
    if rows and draw(st.integers(0, 14)) == 0:
        draw(st.sampled_from(rows)).append("extra")
    header = "ImageId,EncodedPixels,ClassId"
    if draw(st.integers(0, 19)) == 0:
        header = draw(st.sampled_from(["ImageId,ClassId,EncodedPixels", "ImageId,EncodedPixels", "",
                                       "imageid,encodedpixels,classid", "ImageId , EncodedPixels , ClassId"]))
    quote = draw(st.booleans())
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    lines = [header] + [",".join(f'"{f}"' if quote and '"' not in f else f for f in r) for r in rows]
    blob = (draw(st.sampled_from(["", "\ufeff"])) + eol.join(lines) + eol).encode()
    if draw(st.integers(0, 14)) == 0:
        pos = draw(st.integers(0, len(blob)))
        blob = blob[:pos] + draw(st.sampled_from([b"\xff", b"\x00", b'"', b"\n", b",", b"\xe2\x80"])) + blob[pos:]
    return blob


@pytest.mark.parametrize("n", fuzz_sizes())
def test_fuzz_validator_agrees_with_an_independent_reading(n, tmp_path_factory):
    """Generated submission files (missing images, unknown/padded ids, bad runs and classes, overlaps,
    duplicates, extra fields, quotes, bad headers, BOM, CRLF, stray bytes): validate_submission returns
    no problem exactly when the independent reference accepts the bytes, never raises, and every problem
    names its line, ImageId, header or file. Files it accepts also pass as a DataFrame."""
    d = tmp_path_factory.mktemp("subfuzz")
    seen = {"valid": 0, "rejected": 0}

    @settings(max_examples=n, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(submission_files())
    def check(blob):
        p = d / "submission.csv"
        p.write_bytes(blob)
        want = reference_valid(blob)
        problems = lsub.validate_submission(p, FZ_IDS, FZ_S)
        assert (problems == []) == want, (problems, blob)
        assert all(isinstance(q, str) and q.startswith(("line ", "ImageId ", "header: ", str(p))) for q in problems)
        if want:
            df = pd.read_csv(p, dtype=str, keep_default_na=False)
            assert lsub.validate_submission(df, FZ_IDS, FZ_S) == []
        seen["valid" if want else "rejected"] += 1

    check()
    assert seen["valid"] + seen["rejected"] >= n
    assert seen["valid"] >= n // 20 and seen["rejected"] >= n // 4, seen
    print(f"submission validator fuzz: {seen}")


def test_validator_reads_long_rle_non_utf8_padded_ids_and_repeated_columns(tmp_path):
    m = np.zeros((512, 512), np.uint8)
    m[::2] = 1  # every other row: 256 runs per column, a 1.6 MB EncodedPixels (csv's default limit is 128 KiB)
    enc = lrle.encode(m)
    assert len(enc) > 131072
    p = tmp_path / "long.csv"
    p.write_text(f"ImageId,EncodedPixels,ClassId\na.jpg,{enc},6\n")
    assert lsub.validate_submission(p, ["a.jpg"], 512) == []
    p.write_bytes(b"ImageId,EncodedPixels,ClassId\na.jpg,1 1,6\nb\xff.jpg,1 1,6\n")
    problems = lsub.validate_submission(p, ["a.jpg"], 512)
    assert problems[0] == "line 3: not UTF-8 text (undecodable byte at offset 43)"
    assert problems[1].startswith("line 3 (b\ufffd.jpg): ImageId is not a test image") and len(problems) == 2
    p.write_text("ImageId,EncodedPixels,ClassId\na.jpg ,1 1,6\n")
    assert lsub.validate_submission(p, ["a.jpg"], 512) == [
        "line 2 (a.jpg): ImageId 'a.jpg ' has leading/trailing whitespace"]
    df = pd.DataFrame([["a.jpg", "1 1", "6", "7"]], columns=["ImageId", "EncodedPixels", "ClassId", "ClassId"])
    problems = lsub.validate_submission(df, ["a.jpg"], 512)
    assert len(problems) == 1 and problems[0].startswith("header: expected")


def test_write_submission_validates_the_bytes_it_wrote(tmp_path, monkeypatch):
    out = tmp_path / "submission.csv"
    out.write_text("an earlier submission\n")
    good = pd.DataFrame(GOOD, columns=list(SUBMISSION_COLUMNS))
    real_to_csv = pd.DataFrame.to_csv

    def lossy_to_csv(self, path, **kw):  # a serialisation bug: the last row never reaches the file
        return real_to_csv(self.iloc[:-1], path, **kw)

    monkeypatch.setattr(pd.DataFrame, "to_csv", lossy_to_csv)
    with pytest.raises(lsub.SubmissionError, match=r"(?s)submission.csv as written is invalid .*b.jpg: missing"):
        lsub.write_submission(good, out, ["a.jpg", "b.jpg"], S)
    assert out.read_text() == "an earlier submission\n" and [p.name for p in tmp_path.iterdir()] == [out.name]


WRITE_SCRIPT = """
import sys, pandas as pd
from lib import submission_file as lsub
rows = [("a.jpg", " ".join(f"{1 + 2 * k} 1" for k in range(5000)), "6"), ("b.jpg", "1 1", "0")]
lsub.write_submission(pd.DataFrame(rows, columns=["ImageId", "EncodedPixels", "ClassId"]), sys.argv[1],
                      ["a.jpg", "b.jpg"], 512)
"""


def test_disk_full_or_read_only_dir_never_leaves_a_partial_submission(tmp_path):
    from conftest import file_size_limit, read_only_dirs_work, without_root_override

    out = tmp_path / "sub" / "submission.csv"
    out.parent.mkdir()
    out.write_text("ImageId,EncodedPixels,ClassId\nold.jpg,1 1,0\n")
    before = snapshot_files(out.parent)
    r = run_stage(["python", "-c", WRITE_SCRIPT, out], preexec_fn=file_size_limit(4096))  # the CSV is ~50 KB
    assert r.returncode != 0 and "File too large" in r.stderr.strip().splitlines()[-1], r.stderr[-2000:]
    assert snapshot_files(out.parent) == before  # the old file intact, no temporary left
    if read_only_dirs_work(tmp_path):
        out.parent.chmod(0o555)
        try:
            r = run_stage(["python", "-c", WRITE_SCRIPT, out], preexec_fn=without_root_override())
        finally:
            out.parent.chmod(0o755)
        assert r.returncode != 0 and "Permission denied" in r.stderr.strip().splitlines()[-1]
        assert snapshot_files(out.parent) == before
    assert run_stage(["python", "-c", WRITE_SCRIPT, out]).returncode == 0
    assert lsub.validate_submission(out, ["a.jpg", "b.jpg"], 512) == []


def test_validator_refuses_csv_that_readers_disagree_on(tmp_path):
    # an unterminated quote at the end (pandas: "EOF inside string"), text after a closing quote
    p = tmp_path / "s.csv"
    good = "ImageId,EncodedPixels,ClassId\na.jpg,1 1,0\n"
    for tail in ['"\n', 'a.jpg,"1 1"x,0\n']:
        p.write_text(good + tail)
        problems = lsub.validate_submission(p, ["a.jpg"], S)
        assert len(problems) == 1 and problems[0].startswith("line 3: not parseable as CSV"), problems
