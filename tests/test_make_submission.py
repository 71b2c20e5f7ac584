"""lib/make_submission.py and 06_make_submission.py: stage 06 end to end (one model, an ensemble, tuning,
--tune-on a val split, validation of a file), settings without argparse."""
import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from lib import make_submission
from lib import prediction_table as lpred
from lib.labels import parse_class_id
from lib.postprocess import load_params
from lib.tuning import load_combination
from test_fusion import H, W
from test_kaggle_data import make_data_dir
from test_postprocess import pred_rows, rect, write_gt
from test_scoring import fashionpedia_sample, gt_items
from test_tuning import gt_csv, three_models, write_pred_dir

REPO = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("make_submission", REPO / "06_make_submission.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_make_submission_script_end_to_end(tmp_path, capsys):
    items = gt_items()
    d = make_data_dir(tmp_path / "data", ["a.jpg", "b.jpg", "c.jpg"], [(40, 30)] * 3)
    write_gt(d / "test_ground_truth.csv", items)
    perfect = [r for image_id, m, cls in items  # stored at the original 40x30: exact at --mask-size 0
               for r in pred_rows(image_id, [m.astype(np.float32)], [parse_class_id(cls)[0]], [0.99], orig=(40, 30),
                                  model="good")]
    noisy = pred_rows("a.jpg", [rect(0, 0, 32, 32)], [1], [0.8], orig=(40, 30), model="bad")
    pdir = tmp_path / "pred"
    pdir.mkdir()
    lpred.make_table(perfect + noisy).to_parquet(pdir / "predictions.parquet")
    pd.DataFrame({"image_id": ["a.jpg", "b.jpg", "c.jpg"], "orig_height": 40, "orig_width": 30}).to_parquet(
        pdir / "images.parquet")
    mod = load_script()
    out = tmp_path / "sub" / "submission.csv"
    base = ["--data-dir", str(d), "--out-dir", str(out.parent), "--mask-size", "0", "--no-progress"]
    assert mod.main(mod.get_args_parser().parse_args(["--predictions", str(pdir), "--models", "good"] + base)) == 0
    scores = json.loads((out.parent / "scores.json").read_text())["scores"]
    assert scores["good"]["kaggle"] == 1.0  # c.jpg: nothing predicted, nothing there: 1
    sub = pd.read_csv(out, dtype=str)
    assert sub["ImageId"].tolist() == ["a.jpg"] * 3 + ["b.jpg", "c.jpg"]
    assert sub.iloc[-1].tolist() == ["c.jpg", "1 1", "0"]
    meta = json.loads((out.parent / "meta.json").read_text())
    assert meta["num_rows"] == 5 and meta["num_placeholder_rows"] == 1 and meta["models"] == ["good"]
    assert mod.main(mod.get_args_parser().parse_args(["--validate", str(out)] + base)) == 0
    # Two models -> ensemble; scores per model and for the ensemble.
    assert mod.main(mod.get_args_parser().parse_args(
        ["--predictions", str(pdir / "predictions.parquet"), "--ensemble-weights", "3", "1"] + base)) == 0
    scores = json.loads((out.parent / "scores.json").read_text())["scores"]
    assert {"good", "bad", "ensemble"} <= set(scores) and scores["bad"]["kaggle"] < scores["good"]["kaggle"]
    printed = capsys.readouterr().out
    assert "ensemble" in printed and "kaggle" in printed
    # --tune writes params.json, later runs load it.
    assert mod.main(mod.get_args_parser().parse_args(
        ["--predictions", str(pdir), "--models", "good", "--tune", "--tune-grid", '{"min_area": [0, 5000]}']
        + base)) == 0
    assert load_params(out.parent / "params.json").min_area == 0
    # An invalid file: exit 1, every problem printed.
    bad = tmp_path / "bad.csv"
    bad.write_text("ImageId,EncodedPixels,ClassId\na.jpg,1 2 3,6\nzz.jpg,1 1,0\n")
    assert mod.main(mod.get_args_parser().parse_args(["--validate", str(bad)] + base)) == 1
    printed = capsys.readouterr().out
    assert "odd number" in printed and "not a test image" in printed and "b.jpg: missing" in printed


def test_make_submission_tune_on_val_applies_the_winner_to_test(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("make_submission", REPO / "06_make_submission.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sources, items = three_models()
    # Val: 05 output of a cache split (meta source + gt.csv).
    val = write_pred_dir(tmp_path / "val", list(sources.values()), ["a.jpg", "b.jpg"], (H, W),
                         {"prepared_dir": str(tmp_path / "prep"), "split": "val"})
    gt_csv(val / "gt.csv", items)
    # Test: the same three models on the test images of a Kaggle-layout dir, with its ground truth.
    data = tmp_path / "data"
    (data / "test").mkdir(parents=True)
    for i in ("a.jpg", "b.jpg"):
        cv2.imwrite(str(data / "test" / i), np.zeros((H, W, 3), np.uint8))
    gt_csv(data / "test_ground_truth.csv", items)
    test = write_pred_dir(tmp_path / "test", list(sources.values()), ["a.jpg", "b.jpg"], (H, W))
    out = tmp_path / "sub" / "submission.csv"
    args = ["--predictions", str(test), "--tune-on", str(val), "--data-dir", str(data), "--out-dir", str(out.parent),
            "--mask-size", "0", "--no-progress", "--report-images", "0", "--weight-choices", "1",
            "--tune-grid", '{"score_thresh": [0.3, 0.5]}']
    assert mod.main(mod.get_args_parser().parse_args(args)) == 0
    assert list(load_combination(out.parent / "params.json").models) == ["good", "other"]
    meta = json.loads((out.parent / "meta.json").read_text())
    assert meta["combination"]["models"] == ["good", "other"] and meta["scores"]["submission"]["kaggle"] == 1.0
    assert meta["scores"]["noise"]["kaggle"] == 0.0
    assert meta["scores"]["ensemble"]["kaggle"] < 1.0  # all three fused: noise's false positives cost
    sub = pd.read_csv(out, dtype=str)
    assert sorted(sub["ClassId"]) == ["3", "5"]  # no noise rows
    # A later run without tuning loads the choice from params.json by default; flags still override it.
    assert mod.main(mod.get_args_parser().parse_args(args[:2] + args[4:])) == 0
    assert "combination (" + str(out.parent / "params.json") in capsys.readouterr().out
    assert json.loads((out.parent / "meta.json").read_text())["combination"]["models"] == ["good", "other"]
    assert mod.main(mod.get_args_parser().parse_args(args[:2] + args[4:] + ["--models", "noise"])) == 0
    assert json.loads((out.parent / "meta.json").read_text())["combination"]["models"] == ["noise"]
    # An unfinished 05 run is refused (its table may be stale or partial).
    meta = json.loads((test / "meta.json").read_text())
    (test / "meta.json").write_text(json.dumps(dict(meta, status="partial")))
    with pytest.raises(SystemExit, match="did not finish"):
        mod.main(mod.get_args_parser().parse_args(args))
    (test / "meta.json").write_text(json.dumps(dict(meta, status="done")))
    # --tune-on needs a val-split prediction dir with gt.csv.
    with pytest.raises(SystemExit, match="not a 05 output"):
        mod.main(mod.get_args_parser().parse_args(["--predictions", str(test), "--tune-on", str(test)] + args[4:]))


def _one_model_dir(tmp_path):
    items = gt_items()
    d = make_data_dir(tmp_path / "data", ["a.jpg", "b.jpg", "c.jpg"], [(40, 30)] * 3)
    write_gt(d / "test_ground_truth.csv", items)
    rows = [r for image_id, m, cls in items
            for r in pred_rows(image_id, [m.astype(np.float32)], [parse_class_id(cls)[0]], [0.99], orig=(40, 30))]
    pdir = tmp_path / "pred"
    pdir.mkdir()
    lpred.make_table(rows).to_parquet(pdir / "predictions.parquet")
    return d, pdir


def test_run_takes_settings_without_argparse(tmp_path):
    d, pdir = _one_model_dir(tmp_path)
    s = make_submission.SubmissionSettings(predictions=[pdir], data_dir=d, out_dir=tmp_path / "sub", mask_size=0,
                                           report_images=0, processes=1, progress=False)
    meta = make_submission.run(s)
    assert meta["scores"]["m"]["kaggle"] == 1.0 and meta["num_rows"] == 5 and meta["num_placeholder_rows"] == 1
    assert make_submission.validate_file(tmp_path / "sub" / "submission.csv", d, None, progress=False) == 0
    with pytest.raises(ValueError, match="--models \\['zz'\\] not in the tables"):
        make_submission.run(make_submission.SubmissionSettings(predictions=[pdir], models=["zz"], data_dir=d,
                                                               out_dir=tmp_path / "sub2", progress=False))
    with pytest.raises(ValueError, match="--params file not found"):
        make_submission.run(make_submission.SubmissionSettings(predictions=[pdir], params=tmp_path / "none.json",
                                                               data_dir=d, out_dir=tmp_path / "sub3", progress=False))


def test_parse_grid():
    assert make_submission.parse_grid(None) is None
    assert make_submission.parse_grid('{"min_area": [0, 5]}') == {"min_area": [0, 5]}
    with pytest.raises(ValueError, match="not valid JSON"):
        make_submission.parse_grid("{min_area: 0}")
    with pytest.raises(ValueError, match="expected a JSON object"):
        make_submission.parse_grid("[1, 2]")


def test_folder_predictions_scored_on_coco_ground_truth(shared_data, tmp_path):
    """05 --images output (a folder's images.parquet) + Fashionpedia's COCO JSON as --gt: scores and a
    submission over the folder's images, no Kaggle test folder needed."""
    from pycocotools import mask as mask_utils

    d, gt, names, ours, files = fashionpedia_sample(shared_data)
    rows = []
    for a in gt["annotations"]:  # the ground truth itself as predictions: a perfect score
        if names[a["category_id"]] in ours:
            name, h, w = files[a["image_id"]]
            m = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], h, w)))
            rows += pred_rows(name, [m.astype(np.float32)], [ours[names[a["category_id"]]]], [0.9], orig=(h, w))
    pdir = tmp_path / "pred"
    pdir.mkdir()
    lpred.make_table(rows).to_parquet(pdir / "predictions.parquet")
    pd.DataFrame({"image_id": [f for f, _, _ in files.values()], "orig_height": [h for _, h, _ in files.values()],
                  "orig_width": [w for _, _, w in files.values()], "error": ""}).to_parquet(pdir / "images.parquet")
    (pdir / "meta.json").write_text(json.dumps({"status": "done", "source": {"images": str(d), "root": str(d)}}))
    s = make_submission.SubmissionSettings(predictions=[pdir], gt=d / "sample.json", out_dir=tmp_path / "sub",
                                           mask_size=0, report_images=1, processes=1, progress=False,
                                           postprocess={"overlap": "none", "nms_iou": 1.0, "min_area": 0})
    meta = make_submission.run(s)
    assert meta["scores"]["m"]["kaggle"] == 1.0 and meta["scores"]["m"]["AP"] == pytest.approx(1.0)
    sub = pd.read_csv(tmp_path / "sub" / "submission.csv")
    assert set(sub["ImageId"]) == {"000000009813.jpg", "000000010223.jpg"}
    shown = list((tmp_path / "sub" / "report" / "overlays").glob("*.png"))  # image | ground truth | model
    assert len(shown) == 1 and shown[0].stem in {"000000009813", "000000010223"}


def data_2020_with_perfect_predictions(tmp_path):
    """A synthetic 2020-layout data dir and a 05-like folder of its ground truth as predictions (attributes as
    probability-1 scores in our 92): ``(data dir, predictions dir)``."""
    from lib import rle, synthetic
    from lib.kaggle_data import index_csv, read_rows
    from lib.labels import competition_labels, map_vocabulary

    data = tmp_path / "d2020"
    synthetic.generate_dataset(data, n_train=1, n_test=3, seed=9, min_side=64, max_side=96, progress=False,
                               edition="2020")
    mapping, theirs = map_vocabulary(data / "label_descriptions.json", competition_labels())
    bound = max(theirs) + 1
    groups, _ = index_csv(data / "test_ground_truth.csv")
    rows = []
    for image_id, entries in groups.items():
        for r in read_rows(data / "test_ground_truth.csv", entries, num_attributes=bound)[0]:
            attrs = np.zeros(92, np.float32)
            attrs[[mapping[a] for a in r.attributes]] = 1.0
            rows += pred_rows(image_id, [rle.decode(r.rle, (r.height, r.width)).astype(np.float32)], [r.category],
                              [0.9], orig=(r.height, r.width), attrs=[attrs])
    pdir = tmp_path / "pred"
    pdir.mkdir()
    lpred.make_table(rows).to_parquet(pdir / "predictions.parquet")
    return data, pdir


def test_2020_edition_submission_and_ground_truth(tmp_path):
    """A 2020-layout data dir: 06 scores on its ground truth (sparse attribute ids mapped by name) and writes
    the 2020 columns with the 2020 ids; the validator reads them back, and refuses a bad AttributesIds."""
    data, pdir = data_2020_with_perfect_predictions(tmp_path)
    s = make_submission.SubmissionSettings(predictions=[pdir], data_dir=data, out_dir=tmp_path / "sub", mask_size=0,
                                           report_images=0, processes=1, progress=False,
                                           postprocess={"attributes": "on", "overlap": "none", "nms_iou": 1.0,
                                                        "min_area": 0})
    meta = make_submission.run(s)
    assert meta["edition"] == "2020" and meta["scores"]["m"]["kaggle"] == 1.0
    sub = pd.read_csv(tmp_path / "sub" / "submission.csv", dtype=str, keep_default_na=False)
    assert list(sub.columns) == ["ImageId", "EncodedPixels", "ClassId", "AttributesIds"]
    assert sub["ClassId"].str.isdigit().all()
    ids = {int(a) for v in sub["AttributesIds"] if v for a in v.split(",")}
    assert ids and ids <= {3 * a + 2 for a in range(92)}  # the synthetic 2020 file's sparse ids
    assert make_submission.validate_file(tmp_path / "sub" / "submission.csv", data, None, progress=False) == 0
    bad = sub.copy()
    bad.loc[0, "AttributesIds"] = "1,x"
    bad.loc[1, "ClassId"] = "6_2"
    bad.loc[2, "AttributesIds"] = "1"  # not an id of the 2020 label file
    bad.to_csv(tmp_path / "bad.csv", index=False)
    assert make_submission.validate_file(tmp_path / "bad.csv", data, None, progress=False) == 1
    from lib.submission_file import validate_submission

    sizes = {i: (int(h), int(w)) for i, h, w in pd.read_parquet(pdir / "predictions.parquet")[
        ["image_id", "orig_height", "orig_width"]].drop_duplicates().itertuples(index=False)}
    problems = validate_submission(tmp_path / "bad.csv", sorted(sizes), None, sizes, {3 * a + 2 for a in range(92)})
    assert any("line 2 " in p and "comma-separated" in p for p in problems)
    assert any("line 3 " in p and "not a category id" in p for p in problems)
    assert any("line 4 " in p and "unknown attribute ids [1]" in p for p in problems) and len(problems) == 3


def test_predictions_without_meta_json_or_missing_are_a_clear_error(tmp_path):
    """A prediction folder without 05's meta.json is taken to be of --data-dir's test images: with no such
    images there, 06 says so (and what to give) instead of a traceback; a path that is not there is named."""
    _, pdir = _one_model_dir(tmp_path)
    mod = load_script()
    args = ["--predictions", str(pdir), "--data-dir", str(tmp_path / "nowhere"), "--out-dir", str(tmp_path / "sub"),
            "--no-progress"]
    with pytest.raises(SystemExit, match=r"06: error: --predictions .*pred: .*pred has no 05 meta.json .* test images "
                                         r"of --data-dir .*nowhere, but image directory not found"):
        mod.main(mod.get_args_parser().parse_args(args))
    with pytest.raises(SystemExit, match=r"06: error: --predictions .*gone: not found"):
        mod.main(mod.get_args_parser().parse_args(["--predictions", str(tmp_path / "gone")] + args[2:]))


def test_overlap_none_scores_as_asked_and_still_writes_a_valid_submission(tmp_path, capsys):
    """--overlap none (a scoring experiment) used to end in a submission 06 itself refused to write: now the
    scores use it and submission.csv has the same-category overlaps removed all the same."""
    d = make_data_dir(tmp_path / "data", ["a.jpg"], [(40, 30)])
    pdir = tmp_path / "pred"
    pdir.mkdir()
    lpred.make_table(pred_rows("a.jpg", [rect(0, 0, 20, 20, hw=(40, 30)), rect(10, 5, 30, 25, hw=(40, 30))], [6, 6],
                               [0.9, 0.8], orig=(40, 30))).to_parquet(pdir / "predictions.parquet")
    mod = load_script()
    out = tmp_path / "sub"
    assert mod.main(mod.get_args_parser().parse_args(
        ["--predictions", str(pdir), "--data-dir", str(d), "--out-dir", str(out), "--mask-size", "0", "--overlap",
         "none", "--nms-iou", "1", "--report-images", "0", "--no-progress"])) == 0
    assert "overlaps removed by score all the same" in capsys.readouterr().out
    meta = json.loads((out / "meta.json").read_text())
    assert meta["params"]["overlap"] == "none" and meta["submission_overlap"] == "score"
    assert make_submission.validate_file(out / "submission.csv", d, None, progress=False) == 0
    assert len(pd.read_csv(out / "submission.csv")) == 2  # both instances, the second without the shared pixels


def test_unmapped_ground_truth_categories_are_warned_about_once(tmp_path, capsys):
    """A COCO ground truth with a category that is not among the 46: one warning per 06 run, not one per
    scored table (each model, the ensemble, the submission) and the report."""
    from pycocotools import mask as mask_utils

    d = make_data_dir(tmp_path / "data", ["a.jpg"], [(40, 30)])
    m = rect(0, 0, 20, 20, hw=(40, 30)).astype(np.uint8)
    rle = mask_utils.encode(np.asfortranarray(m))
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg", "height": 40, "width": 30}],
        "categories": [{"id": 0, "name": "shirt, blouse"}, {"id": 1, "name": "earmuffs"}],
        "annotations": [{"id": k + 1, "image_id": 1, "category_id": k, "iscrowd": 0, "area": int(m.sum()),
                         "segmentation": {"size": [40, 30], "counts": rle["counts"].decode()}} for k in (0, 1)]}))
    pdir = tmp_path / "pred"
    pdir.mkdir()
    lpred.make_table(pred_rows("a.jpg", [m.astype(np.float32)], [0], [0.9], orig=(40, 30), model="p")
                     + pred_rows("a.jpg", [m.astype(np.float32)], [0], [0.8], orig=(40, 30), model="q")
                     ).to_parquet(pdir / "predictions.parquet")
    s = make_submission.SubmissionSettings(predictions=[pdir], gt=gt, data_dir=d, out_dir=tmp_path / "sub",
                                           mask_size=0, report_images=1, processes=1, progress=False)
    meta = make_submission.run(s)
    assert set(meta["scores"]) == {"p", "q", "ensemble"}  # scored three times, and read once more by the report
    assert capsys.readouterr().out.count("['earmuffs'] are not among the 46") == 1
    make_submission.run(s)  # a second run warns again (once)
    assert capsys.readouterr().out.count("['earmuffs'] are not among the 46") == 1


def test_2020_edition_masks_default_to_the_long_side_1024(tmp_path, capsys):
    """Without --mask-size 06 writes a 2020 data dir's masks where that edition is evaluated, the image scaled
    so its long side is 1024 (aspect kept), and says so in meta.json; --validate then checks the file at that
    size, and a copy of it checked at the images' own size is refused where its runs leave the image."""
    from lib import rle, synthetic
    from lib import submission_file as lsub
    from lib.kaggle_data import list_test_images

    data = tmp_path / "d2020"
    synthetic.generate_dataset(data, n_train=1, n_test=2, seed=3, min_side=64, max_side=96, progress=False,
                               edition="2020")
    pdir = tmp_path / "pred"
    pdir.mkdir()
    imgs = list_test_images(data, progress=False)
    rows = [r for i in imgs.itertuples(index=False)  # one box over the lower right quarter of each image
            for r in pred_rows(i.image_id, [rect(i.orig_height // 2, i.orig_width // 2, i.orig_height, i.orig_width,
                                                 hw=(int(i.orig_height), int(i.orig_width)))],
                               [6], [0.9], orig=(int(i.orig_height), int(i.orig_width)))]
    lpred.make_table(rows).to_parquet(pdir / "predictions.parquet")
    out = tmp_path / "sub"
    meta = make_submission.run(make_submission.SubmissionSettings(predictions=[pdir], data_dir=data, out_dir=out,
                                                                  report_images=0, processes=1, progress=False))
    assert meta["edition"] == "2020" and meta["mask_size"] == "long:1024"
    sub = pd.read_csv(out / "submission.csv", dtype=str, keep_default_na=False)
    for i in imgs.itertuples(index=False):
        (enc,) = sub.loc[sub["ImageId"] == i.image_id, "EncodedPixels"]
        h, w = lsub.mask_shape("long:1024", i.orig_height, i.orig_width)
        assert max(h, w) == 1024 and abs(h / w - i.orig_height / i.orig_width) < 2 / min(h, w)
        m = rle.decode(enc, (h, w))
        y0, x0 = i.orig_height // 2 * h / i.orig_height, i.orig_width // 2 * w / i.orig_width  # the box, scaled
        assert m[int(y0) + 2:, int(x0) + 2:].all() and not m[:int(y0) - 1].any() and not m[:, :int(x0) - 1].any()
    assert make_submission.validate_file(out / "submission.csv", data, None, progress=False) == 0
    assert "masks at long:1024 (" in capsys.readouterr().out
    (tmp_path / "copy.csv").write_bytes((out / "submission.csv").read_bytes())
    assert make_submission.validate_file(tmp_path / "copy.csv", data, 0, progress=False) == 1
    printed = capsys.readouterr().out
    assert printed.count("past the") == len(imgs) and "line 2 (" in printed


def test_tuning_with_attributes_tunes_one_threshold_per_attribute(tmp_path):
    """--tune with --attributes on: each attribute's threshold maximises its F1 on the matched instances, saved in
    params.json and used by later runs; --attr-thresh given replaces them."""
    ids = [f"{k}.jpg" for k in range(6)]
    d = make_data_dir(tmp_path / "data", ids, [(40, 30)] * 6)
    m = rect(5, 5, 30, 25, hw=(40, 30)).astype(np.uint8)
    items = [(i, m, "1_3_7" if k < 3 else "1_3") for k, i in enumerate(ids)]
    write_gt(d / "test_ground_truth.csv", items)
    rows = []
    for k, i in enumerate(ids):  # attribute 3 (6 positives) at 0.3; attribute 7 (3: too few to tune) at 0.35
        attrs = np.zeros(92, np.float32)
        attrs[3], attrs[7] = 0.3, 0.35 if k < 3 else 0.05
        rows += pred_rows(i, [m.astype(np.float32)], [1], [0.9], orig=(40, 30), attrs=[attrs])
    pdir = tmp_path / "pred"
    pdir.mkdir()
    lpred.make_table(rows).to_parquet(pdir / "predictions.parquet")
    pd.DataFrame({"image_id": ids, "orig_height": 40, "orig_width": 30}).to_parquet(pdir / "images.parquet")
    common = dict(predictions=[pdir], data_dir=d, out_dir=tmp_path / "sub", mask_size=0, report_images=0,
                  processes=1, progress=False)
    meta = make_submission.run(make_submission.SubmissionSettings(
        **common, tune=True, tune_grid={"score_thresh": [0.5]}, postprocess={"attributes": "on"}))
    saved = json.loads((tmp_path / "sub" / "params.json").read_text())
    thr = saved["params"]["attr_thresholds"]
    assert len(thr) == 92 and thr[3] == 0.3 and thr[7] == 0.5 and set(thr[:3] + thr[8:]) == {0.5}
    assert saved["attributes"]["before"]["micro_f1"] == 0.0  # nothing reaches 0.5
    assert saved["attributes"]["after"]["micro_f1"] == pytest.approx(12 / 15)  # TP 6, FN 3 (attribute 7)
    assert saved["kaggle"] is not None and saved["grid"] == {"score_thresh": [0.5]}  # the tuning's record kept
    a = meta["scores"]["m"]["attributes"]
    assert a["micro_f1"] == pytest.approx(12 / 15) and a["thresholds"] == "tuned" and a["num_instances"] == 6
    sub = pd.read_csv(tmp_path / "sub" / "submission.csv", dtype=str)
    assert sub["ClassId"].tolist() == ["1_3"] * 6
    assert meta["scores"]["m"]["kaggle"] == pytest.approx(0.5)  # the three "1_3" images right, "1_3_7" ones not
    # A later run reads params.json; a shared threshold given replaces the tuned ones.
    again = make_submission.run(make_submission.SubmissionSettings(**common))
    assert again["scores"]["m"]["attributes"]["micro_f1"] == pytest.approx(12 / 15)
    shared = make_submission.run(make_submission.SubmissionSettings(**common, postprocess={"attr_thresh": 0.5}))
    assert shared["params"].get("attr_thresholds") is None
    b = shared["scores"]["m"]["attributes"]
    assert b["micro_f1"] == 0.0 and b["recall"] == 0.0 and b["thresholds"] == 0.5 and b["num_instances"] == 6


def test_2020_edition_metric_counts_attributes_and_tuning_decides_them(tmp_path):
    """The 2020 edition's metric: a hit also needs the attribute sets' F1 above the F1 threshold, so the perfect
    masks without their attributes lose the attribute categories; --tune puts attributes off / on in the grid
    (no --attributes given) and keeps them on."""
    from lib.labels import ATTRIBUTE_CATEGORIES

    data, pdir = data_2020_with_perfect_predictions(tmp_path)
    common = dict(predictions=[pdir], data_dir=data, mask_size=0, report_images=0, processes=1, progress=False)
    fixed = {"overlap": "none", "nms_iou": 1.0, "min_area": 0}
    off = make_submission.run(make_submission.SubmissionSettings(
        **common, out_dir=tmp_path / "off", postprocess=dict(fixed, attributes="off")))
    per_class = json.loads((tmp_path / "off" / "scores.json").read_text())["scores"]["m"]["per_class"]
    gt = pd.read_csv(data / "test_ground_truth.csv", dtype=str, keep_default_na=False)
    with_attrs = {int(c) for c, a in zip(gt["ClassId"], gt["AttributesIds"]) if a}
    assert with_attrs and with_attrs <= set(ATTRIBUTE_CATEGORIES)
    assert {int(c) for c, v in per_class.items() if v == 0.0} == with_attrs  # the others are perfect
    assert off["scores"]["m"]["kaggle"] < 1.0
    tuned = make_submission.run(make_submission.SubmissionSettings(
        **common, out_dir=tmp_path / "tuned", tune=True, tune_grid={"score_thresh": [0.5]}, postprocess=fixed))
    saved = json.loads((tmp_path / "tuned" / "params.json").read_text())
    assert saved["params"]["attributes"] == "on" and saved["grid"]["attributes"] == ["off", "on"]
    assert tuned["scores"]["m"]["kaggle"] == 1.0
