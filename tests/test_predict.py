"""lib/predict.py and 05_predict.py: checkpoints and names, resume, a prepared split, a real test image, reliability."""
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

from conftest import REAL_TEST, REPO
from lib import checkpoint as lcheckpoint
from lib import files as lfiles
from lib import models as lmodels
from lib import tta as ltta
from lib import predict as lpredict
from lib import shards as lshards
from lib import prediction_table as lpred


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name.replace(".py", "").lstrip("0123456789_"), REPO / name)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


PREDICT = _load_script("05_predict.py")


def _args(**kw):
    kw.setdefault("device", "cpu")  # outputs are compared exactly: the CPU repeats them (also on a GPU box)
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
    from lib import submission_file as lsub

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
    assert images.to_dict("records") == [{"image_id": real[0].name, "orig_height": h, "orig_width": w, "error": ""}]
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
    real_write = lshards.ShardStore.write
    calls = []

    def crashing_write(self, rank, index, rows, images):
        calls.append(index)
        if len(calls) == 2:  # the second shard: its rows are written, then the process "dies"
            with lfiles.atomic_path(self.dir / f"part-{rank}-{index:05d}.parquet", suffix=".parquet") as t:
                lpred.make_table(rows).to_parquet(t, index=False)
            raise KeyboardInterrupt("simulated interruption")
        return real_write(self, rank, index, rows, images)

    monkeypatch.setattr(lshards.ShardStore, "write", crashing_write)
    with pytest.raises(KeyboardInterrupt):
        _run(out, tiny_maskrcnn, synthetic_data_dir, batch_size=1, mask_size=64, shard_size=1)
    monkeypatch.setattr(lshards.ShardStore, "write", real_write)
    shards = sorted(p.name for p in (out / "shards").iterdir())
    assert shards == ["config.json", "images-0-00000.parquet", "part-0-00000.parquet", "part-0-00001.parquet"]
    assert not (out / "predictions.parquet").exists()

    # another configuration must not be mixed into these shards
    with pytest.raises(SystemExit, match="another prediction configuration.*mask_size"):
        _run(out, tiny_maskrcnn, synthetic_data_dir, batch_size=1, mask_size=32, shard_size=1)

    seen = []
    real_batch = ltta.predict_batch
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


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGSEGV"])
def test_05_a_loader_process_dying_on_an_image_skips_it_and_goes_on(sig, tmp_path, tiny_maskrcnn, monkeypatch):
    """05 --workers 2 with the process decoding one image killed (SIGKILL) or crashing (SIGSEGV): that image is
    reported unreadable naming the signal, every other image is predicted; no hang."""
    import os
    import signal

    import cv2

    from lib import kaggle_data

    src = tmp_path / "photos"
    src.mkdir()
    rng = np.random.default_rng(0)
    names = [f"{k}.jpg" for k in "abcdefg"]
    for n in names:
        cv2.imwrite(str(src / n), rng.integers(0, 255, (60, 50, 3), dtype=np.uint8))
    real = kaggle_data.read_image

    def dies_on_e(path, *a, **k):
        if str(path).endswith("e.jpg"):
            os.kill(os.getpid(), getattr(signal, sig))
        return real(path, *a, **k)

    monkeypatch.setattr(kaggle_data, "read_image", dies_on_e)  # the forked loader processes inherit it
    old = signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("05 hung")))
    signal.alarm(300)
    try:
        out = tmp_path / "pred"
        PREDICT.main(_args(checkpoints=[tiny_maskrcnn], images=str(src), out_dir=out, workers=2, no_progress=True,
                           score_floor=0.0, batch_size=1))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    meta = json.loads((out / "meta.json").read_text())
    assert list(meta["unreadable_images"]) == ["e.jpg"]
    assert f"the process reading this image died (killed by {sig}" in meta["unreadable_images"]["e.jpg"]
    assert set(lpred.read_table(out / "predictions.parquet")["image_id"]) == set(names) - {"e.jpg"}


def test_05_on_any_folder_skips_unreadable_files_and_exports(tmp_path, tiny_maskrcnn):
    import cv2

    from lib import kaggle_data

    src = tmp_path / "photos"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    cv2.imwrite(str(src / "a.jpg"), rng.integers(0, 255, (90, 70, 3), dtype=np.uint8))
    cv2.imwrite(str(src / "sub" / "b.png"), rng.integers(0, 255, (50, 80, 3), dtype=np.uint8))
    good = (src / "a.jpg").read_bytes()
    (src / "c.jpg").write_bytes(good[: len(good) // 2])  # truncated: its header reads, its pixels do not
    (src / "d.jpg").write_bytes(b"not an image")  # not even a header: skipped when listed
    (src / "notes.txt").write_text("ignored")
    out = tmp_path / "pred"
    PREDICT.main(_args(checkpoints=[tiny_maskrcnn], images=str(src), out_dir=out, workers=0, no_progress=True,
                       score_floor=0.0, batch_size=2))
    images = pd.read_parquet(out / "images.parquet")
    assert list(images["image_id"]) == ["a.jpg", "c.jpg"]  # a folder: its own files, not its subfolders
    meta = json.loads((out / "meta.json").read_text())
    assert set(meta["skipped_images"]) == {"d.jpg"} and "truncated" in meta["unreadable_images"]["c.jpg"]
    table = lpred.read_table(out / "predictions.parquet")
    assert set(table["image_id"]) <= {"a.jpg"} and len(table) > 0
    assert (out / "overlays" / "a.png").is_file() and not (out / "overlays" / "c.png").exists()
    recs = json.loads((out / "coco_results.json").read_text())
    assert all(r["file_name"] == "a.jpg" and r["segmentation"]["size"] == [90, 70] for r in recs)
    assert meta["export"]["num_instances"] == len(recs)
    # A glob reaches into subfolders; ids are paths below the matches' common folder.
    out2 = tmp_path / "pred2"
    PREDICT.main(_args(checkpoints=[tiny_maskrcnn], images=str(src / "**" / "*.png"), out_dir=out2, workers=0,
                       no_progress=True, score_floor=0.0, no_overlays=True))
    assert list(pd.read_parquet(out2 / "images.parquet")["image_id"]) == ["b.png"]
    assert (out2 / "coco_results.json").is_file() and not (out2 / "overlays").exists()
    assert kaggle_data.image_size(src / "sub" / "b.png") == (50, 80)
    with pytest.raises(FileNotFoundError, match="no .jpg"):
        lpredict.images_from_folder(tmp_path / "empty*")


def test_05_export_follows_params_and_coco_gt_and_reruns_keep_up_to_date_files(tmp_path, tiny_maskrcnn, capsys):
    """A rerun of a finished folder prediction with another --params (or --coco-gt) exports again without
    predicting again; the same command again changes nothing; a stale export is deleted, not left beside."""
    import hashlib

    import cv2

    from lib.export import overlay_names
    from lib.labels import competition_labels
    from lib.postprocess import Params, save_params

    src = tmp_path / "photos"
    src.mkdir()
    rng = np.random.default_rng(1)
    for name, hw in (("x.jpg", (60, 50)), ("x.png", (40, 64))):  # overlay names that used to collide
        cv2.imwrite(str(src / name), rng.integers(0, 255, (*hw, 3), dtype=np.uint8))
    out = tmp_path / "pred"
    loose, strict = tmp_path / "loose.json", tmp_path / "strict.json"
    save_params(loose, Params(score_thresh=0.0, min_area=0))
    save_params(strict, Params(score_thresh=1.0))

    def run(**kw):
        PREDICT.main(_args(checkpoints=[tiny_maskrcnn], images=str(src), out_dir=out, workers=0, no_progress=True,
                           score_floor=0.0, **kw))
        return json.loads((out / "meta.json").read_text()), json.loads((out / "coco_results.json").read_text())

    meta, recs = run(params=loose)
    assert len(recs) > 0 and meta["export"]["num_instances"] == len(recs)
    assert sorted(p.name for p in (out / "overlays").iterdir()) == sorted(overlay_names(["x.jpg", "x.png"]).values())
    capsys.readouterr()
    meta, recs = run(params=strict)  # finished predictions: nothing predicted, exported again
    printed = capsys.readouterr().out
    assert "nothing to predict" in printed and "exporting again" in printed
    assert recs == [] and meta["export"]["num_instances"] == 0
    assert meta["export"]["signature"]["params_sha256"] == hashlib.sha256(strict.read_bytes()).hexdigest()
    stamp = {p.name: p.stat().st_mtime_ns for p in [*(out / "overlays").iterdir(), out / "coco_results.json"]}
    run(params=strict)  # the same inputs: kept as they are
    assert "up to date" in capsys.readouterr().out
    assert stamp == {p.name: p.stat().st_mtime_ns for p in [*(out / "overlays").iterdir(), out / "coco_results.json"]}
    save_params(strict, Params(score_thresh=0.0, min_area=0, nms_iou=1.0))  # the same file, new content
    meta, recs = run(params=strict)
    assert len(recs) > 0 and "exporting again" in capsys.readouterr().out

    # --coco-gt: the file's image ids (by name), its category ids (by name); every category of ours is there
    cats = competition_labels().category_names
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": [{"id": 500, "file_name": "x.jpg"}, {"id": 7, "file_name": "x.png"}],
                              "annotations": [], "categories": [{"id": 100 + k, "name": n} for k, n in
                                                                enumerate(cats)]}))
    meta, with_gt = run(params=strict, coco_gt=gt)
    assert {r["image_id"] for r in with_gt} <= {500, 7} and len(with_gt) == len(recs)
    assert sorted(r["category_id"] - 100 for r in with_gt) == sorted(r["category_id"] for r in recs)
    # an image missing from the file: a clear error before anything is predicted or written
    gt.write_text(json.dumps({"images": [{"id": 500, "file_name": "x.jpg"}], "annotations": [], "categories": []}))
    with pytest.raises(SystemExit, match=r"05: error: --coco-gt .*gt.json: 1 of 2 images are not in that file.*x.png"):
        run(params=strict, coco_gt=gt, restart=True)
    assert (out / "predictions.parquet").is_file() and len(json.loads((out / "coco_results.json").read_text()))
    # 05 on a folder without exports after a run with them: the stale export goes
    PREDICT.main(_args(checkpoints=[tiny_maskrcnn], images=str(src), out_dir=out, workers=0, no_progress=True,
                       score_floor=0.0, no_overlays=True, no_coco_results=True))
    assert not (out / "overlays").exists() and not (out / "coco_results.json").exists()
    assert "export" not in json.loads((out / "meta.json").read_text())


def test_05_missing_test_image_is_a_clear_error(tmp_path, tiny_maskrcnn):
    import cv2

    data = tmp_path / "data"
    (data / "test").mkdir(parents=True)
    cv2.imwrite(str(data / "test" / "a.jpg"), np.zeros((20, 20, 3), np.uint8))
    (data / "sample_submission.csv").write_text("ImageId,EncodedPixels,ClassId\na.jpg,1 1,0\nb.jpg,1 1,0\n")
    with pytest.raises(SystemExit, match=r"05: error: 1 test images listed in .*sample_submission.csv are missing "
                                         r"from .*test \(looked for <ImageId> and <ImageId>\.jpg.*\): \['b.jpg'\]"):
        _run(tmp_path / "out", tiny_maskrcnn, data)


def test_05_on_the_cache_val_split_writes_gt(tmp_path, tiny_maskrcnn, prepared_set):
    from lib import prepared as lprepared
    from lib import scoring as lscoring

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
    s = lscoring.score_table(table, out / "gt.csv", {"score_thresh": 0.0}, mask_size=None, images=images,
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
