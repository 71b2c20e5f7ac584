"""notebooks/imaterialist_pipeline.ipynb: committed without outputs, settings from NB_* variables, each model's
starting-weights flags from WEIGHTS / WEIGHTS_DIR, and a run top to bottom on a tiny synthetic set (01 -> 02/03/04 ->
05 val + test -> 06 tune + submission) in a temporary directory."""
import json
import os
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import REPO

NOTEBOOK = REPO / "notebooks" / "imaterialist_pipeline.ipynb"
SCRIPTS = ("01_prepare_data.py", "02_train_unet.py", "03_train_maskrcnn.py", "04_train_deepmac.py", "05_predict.py",
           "06_make_submission.py")


def _read_notebook():
    nbformat = pytest.importorskip("nbformat")
    return nbformat.read(NOTEBOOK, as_version=4)


def _clear_nb_env(monkeypatch):
    for k in list(os.environ):
        if k.startswith("NB_"):
            monkeypatch.delenv(k)


def test_committed_notebook_has_no_outputs():
    import nbformat

    nb = _read_notebook()
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    for i, cell in enumerate(code):
        assert cell.outputs == [], f"code cell {i} carries outputs"
        assert cell.execution_count is None, f"code cell {i} carries an execution count"
    source = "\n".join(c.source for c in code)
    for script in SCRIPTS:
        assert script in source, f"the notebook never calls {script}"


def _settings(monkeypatch, tmp_path, **env):
    """Run the notebook's first code cell (the settings) with NB_* variables ``env``; its namespace."""
    _clear_nb_env(monkeypatch)
    for k, v in env.items():
        monkeypatch.setenv(f"NB_{k}", str(v))
    monkeypatch.chdir(tmp_path)
    cell = next(c for c in _read_notebook().cells if c.cell_type == "code")
    ns = {}
    exec(compile(cell.source, "settings cell", "exec"), ns)
    return ns


def _setup(ns):
    """Run the notebook's second code cell (the set-up) in the settings cell's namespace ``ns``; ``ns``."""
    setup = [c for c in _read_notebook().cells if c.cell_type == "code"][1]
    exec(compile(setup.source, "set-up cell", "exec"), ns)
    return ns


def test_run_streams_output_and_raises_on_failure(monkeypatch, tmp_path, capsys):
    pytest.importorskip("IPython")
    ns = _setup(_settings(monkeypatch, tmp_path, REPO_DIR=REPO, WORK_DIR=tmp_path / "w", WEIGHTS="none"))
    capsys.readouterr()
    ns["run"](sys.executable, "-c", "import sys; print('to stdout'); print('to stderr', file=sys.stderr)")
    out = capsys.readouterr().out
    assert "to stdout" in out and "to stderr" in out and "[done in" in out
    with pytest.raises(RuntimeError, match=r"exit status 3(.|\n)*last words"):
        ns["run"](sys.executable, "-c", "print('last words'); raise SystemExit(3)")
    assert (tmp_path / "w").is_dir()  # commands run in WORK_DIR, created by the set-up cell


def test_show_disk_reports_each_stage(monkeypatch, tmp_path, capsys):
    pytest.importorskip("IPython")
    ns = _setup(_settings(monkeypatch, tmp_path, REPO_DIR=REPO, WORK_DIR=tmp_path / "w",
                          SCRATCH_DIR=tmp_path / "s", WEIGHTS="none"))
    assert (tmp_path / "s").is_dir()  # created by the set-up cell
    (tmp_path / "s" / "prepared").mkdir()
    with open(tmp_path / "s" / "prepared" / "a.jpg", "wb") as f:
        f.truncate(30_000_000)  # sparse: its length counts
    capsys.readouterr()
    ns["show_disk"]("01", tmp_path / "s" / "prepared")
    out = capsys.readouterr().out
    assert out.startswith(f"disk after 01: {tmp_path / 's' / 'prepared'} 30.0 MB;") and " free for " in out


def test_settings_follow_the_data_and_the_environment(monkeypatch, tmp_path):
    if Path("/kaggle/input/imaterialist-fashion-2019-FGVC6").is_dir():
        pytest.skip("the competition data is attached here: the defaults follow it")
    work = tmp_path / "w"
    # No data: a synthetic set generated into the work dir, CPU-sized defaults.
    ns = _settings(monkeypatch, tmp_path, REPO_DIR=REPO, WORK_DIR=work)
    assert ns["REPO_DIR"] == REPO and ns["WORK_DIR"] == work
    assert ns["DATA_DIR"] == work / "synthetic_data" and ns["SYNTHETIC"] is True
    assert (ns["IMAGE_SIZE"], ns["BACKBONE"], ns["TTA_FLIP"]) == (128, "resnet18", False)
    assert ns["MODELS"] == ["maskrcnn", "deepmac", "unet"]
    if not Path("/kaggle/working").is_dir():  # off Kaggle: everything in WORK_DIR, no TensorBoard started
        assert ns["SCRATCH_DIR"] == work and ns["TENSORBOARD"] is False
    ns = _settings(monkeypatch, tmp_path, REPO_DIR=REPO, WORK_DIR=work, SCRATCH_DIR=tmp_path / "s", TENSORBOARD="1")
    assert ns["SCRATCH_DIR"] == tmp_path / "s" and ns["TENSORBOARD"] is True

    # A real Kaggle-layout dir (train.csv, no synthetic.json marker): the README's real-data recipe.
    real = tmp_path / "real"
    real.mkdir()
    (real / "train.csv").write_text("ImageId,EncodedPixels,Height,Width,ClassId\n")
    ns = _settings(monkeypatch, tmp_path, REPO_DIR=REPO, WORK_DIR=work, DATA_DIR=real)
    assert ns["DATA_DIR"] == real and ns["SYNTHETIC"] is False
    assert (ns["IMAGE_SIZE"], ns["BACKBONE"], ns["UNET_ENCODER"], ns["TTA_FLIP"]) == (512, "resnet50", "resnet34", True)
    assert "--anchor-sizes" not in ns["MODEL_ARGS"]["maskrcnn"]
    (real / "synthetic.json").write_text("{}")
    assert _settings(monkeypatch, tmp_path, REPO_DIR=REPO, WORK_DIR=work, DATA_DIR=real)["SYNTHETIC"] is True

    # Overrides are converted to the default's type; NB_<MODEL>_ARGS appends flags.
    ns = _settings(monkeypatch, tmp_path, REPO_DIR=REPO, WORK_DIR=work, MODELS="unet, maskrcnn", EPOCHS="2",
                   VAL_FRACTION="0.3", TTA_FLIP="1", WEIGHTS="none", IMAGE_SIZE="96", MASKRCNN_ARGS="--lr 0.01")
    assert ns["MODELS"] == ["unet", "maskrcnn"] and ns["EPOCHS"] == 2 and ns["VAL_EVERY"] == 2
    assert ns["VAL_FRACTION"] == 0.3 and ns["TTA_FLIP"] is True and ns["WEIGHTS"] == "none"
    assert ns["IMAGE_SIZE"] == 96 and ns["MODEL_ARGS"]["maskrcnn"][-2:] == ["--lr", "0.01"]
    assert "--anchor-sizes" in ns["MODEL_ARGS"]["maskrcnn"]  # tiny images: demo.sh's small detector
    assert _settings(monkeypatch, tmp_path, REPO_DIR=REPO, WORK_DIR=work)["WEIGHTS"] == "auto"
    with pytest.raises(ValueError, match="WEIGHTS='pretrained': expected auto, coco, imagenet or none"):
        _settings(monkeypatch, tmp_path, REPO_DIR=REPO, WORK_DIR=work, WEIGHTS="pretrained")


def test_weight_file_names_are_the_scripts(monkeypatch, tmp_path):
    """The notebook's file names are lib.weights' (torchvision's published names), which the scripts look up."""
    from lib import weights

    ns = _settings(monkeypatch, tmp_path, REPO_DIR=REPO, WORK_DIR=tmp_path / "w")
    assert ns["IMAGENET_FILES"] == weights.BACKBONE_FILES and ns["COCO_FILES"] == weights.COCO_FILES


def _weight_args(monkeypatch, tmp_path, files=(), states=None, **env):
    """``(WEIGHT_ARGS, WEIGHTS_DIR)`` of the set-up cell with a new WEIGHTS_DIR holding ``files`` (empty stand-ins:
    the notebook only resolves paths) and ``states`` ({name: state dict}, saved with torch.save)."""
    pytest.importorskip("IPython")
    wdir = Path(tempfile.mkdtemp(prefix="weights", dir=tmp_path))
    for f in files:
        (wdir / f).touch()
    for f, state in (states or {}).items():
        torch.save(state, wdir / f)
    env = {"REPO_DIR": REPO, "WORK_DIR": tmp_path / "w", "WEIGHTS_DIR": wdir, **env}
    ns = _setup(_settings(monkeypatch, tmp_path, **{k: v for k, v in env.items() if v is not None}))
    return ns["WEIGHT_ARGS"], wdir.resolve()


R18, R34, R50 = "resnet18-f37072fd.pth", "resnet34-b627a593.pth", "resnet50-0676ba61.pth"
COCO, COCO_V2 = "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth", "maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth"
REAL = {"BACKBONE": "resnet50", "UNET_ENCODER": "resnet34"}  # the real-data defaults
NO_KAGGLE_INPUT = not Path("/kaggle/input").is_dir()  # so no WEIGHTS_DIR is found when NB_WEIGHTS_DIR is unset


def test_auto_takes_what_weights_dir_holds(monkeypatch, tmp_path, capsys):
    # nothing there (or no WEIGHTS_DIR at all): random weights, no flags
    args, _ = _weight_args(monkeypatch, tmp_path)
    assert args == {"maskrcnn": [], "deepmac": [], "unet": []}
    if NO_KAGGLE_INPUT:
        assert _weight_args(monkeypatch, tmp_path, WEIGHTS_DIR=None)[0] == args
    assert "unet starts from: random weights" in capsys.readouterr().out

    # the synthetic defaults (resnet18 everywhere): the ImageNet file, by path, for all three models
    args, w = _weight_args(monkeypatch, tmp_path, [R18])
    assert args == {m: ["--weights-backbone", w / R18] for m in ("maskrcnn", "deepmac", "unet")}
    assert f"maskrcnn starts from: --weights-backbone {w / R18}" in capsys.readouterr().out

    # resnet50 detectors: the COCO Mask R-CNN file first, the U-Net its encoder's ImageNet file
    args, w = _weight_args(monkeypatch, tmp_path, [COCO, R50, R34], **REAL)
    assert args == {"maskrcnn": ["--weights", w / COCO], "deepmac": ["--weights", w / COCO],
                    "unet": ["--weights-backbone", w / R34]}
    # resnet50_v2 without its own COCO file: the (shared) ImageNet ResNet-50; an encoder without a file: random
    args, w = _weight_args(monkeypatch, tmp_path, [COCO, R50], BACKBONE="resnet50_v2", UNET_ENCODER="efficientnet-b0",
                           MODELS="maskrcnn unet")
    assert args == {"maskrcnn": ["--weights-backbone", w / R50], "unet": []}
    args, w = _weight_args(monkeypatch, tmp_path, [COCO_V2], BACKBONE="resnet50_v2", MODELS="deepmac")
    assert args == {"deepmac": ["--weights", w / COCO_V2]}

    # "none" ignores the files; a start given in NB_<MODEL>_ARGS (fine-tuning our best.pth) replaces the notebook's
    args, _ = _weight_args(monkeypatch, tmp_path, [COCO, R50, R34], WEIGHTS="none", **REAL)
    assert args == {"maskrcnn": [], "deepmac": [], "unet": []}
    args, w = _weight_args(monkeypatch, tmp_path, [COCO, R34], MASKRCNN_ARGS="--weights /x/maskrcnn/best.pth",
                           UNET_ARGS="--weights-backbone=/x/enc.pth", **REAL)
    assert args == {"maskrcnn": [], "deepmac": ["--weights", w / COCO], "unet": []}
    assert "maskrcnn starts from: the flags in NB_MASKRCNN_ARGS" in capsys.readouterr().out


def test_coco_and_imagenet_name_the_files_to_attach(monkeypatch, tmp_path, capsys):
    args, w = _weight_args(monkeypatch, tmp_path, [COCO, R50, R34], WEIGHTS="coco", **REAL)
    assert args == {"maskrcnn": ["--weights", w / COCO], "deepmac": ["--weights", w / COCO],
                    "unet": ["--weights-backbone", w / R34]}
    args, w = _weight_args(monkeypatch, tmp_path, [COCO, R50, R34], WEIGHTS="imagenet", **REAL)
    assert args == {"maskrcnn": ["--weights-backbone", w / R50], "deepmac": ["--weights-backbone", w / R50],
                    "unet": ["--weights-backbone", w / R34]}  # ImageNet even where the COCO file is there

    # a missing file: FileNotFoundError naming each file once, before anything is installed or trained
    with pytest.raises(FileNotFoundError, match=rf"WEIGHTS='coco' needs(.|\n)*\n  {COCO_V2}\n  {R18}\nattach") as e:
        _weight_args(monkeypatch, tmp_path, WEIGHTS="coco", BACKBONE="resnet50_v2", UNET_ENCODER="resnet18")
    assert str(e.value).count(COCO_V2) == 1
    if NO_KAGGLE_INPUT:  # no dataset to find: nothing is there
        with pytest.raises(FileNotFoundError, match=rf"WEIGHTS='imagenet' needs(.|\n)*no weights dataset attached"
                                                    rf"(.|\n)*\n  {R18}\nattach"):
            _weight_args(monkeypatch, tmp_path, WEIGHTS="imagenet", WEIGHTS_DIR=None)
    with pytest.raises(FileNotFoundError, match=rf"\n  {R34}\nattach"):
        _weight_args(monkeypatch, tmp_path, WEIGHTS="imagenet", MODELS="unet", **REAL)
    assert f"unet starts from: {R34} (missing)" in capsys.readouterr().out

    # no such published file: a ValueError saying what to do instead
    with pytest.raises(ValueError, match="COCO Mask R-CNN exists for BACKBONE resnet50 and resnet50_v2, not "
                                         "'resnet18'"):
        _weight_args(monkeypatch, tmp_path, WEIGHTS="coco", MODELS="maskrcnn")
    with pytest.raises(ValueError, match="no torchvision ImageNet file for unet's 'efficientnet-b0'(.|\n)*"
                                         "NB_UNET_ARGS"):
        _weight_args(monkeypatch, tmp_path, [R50], WEIGHTS="imagenet", UNET_ENCODER="efficientnet-b0")


def test_resolved_files_load_in_the_scripts(monkeypatch, tmp_path):
    """A real torchvision-layout file, as the notebook passes it, loads through lib.weights as 02/03 do."""
    import torchvision

    from lib import models, weights

    args, w = _weight_args(monkeypatch, tmp_path, states={R18: torchvision.models.resnet18(weights=None).state_dict()},
                           MODELS="unet maskrcnn")
    for arch, cfg in (("unet", {"encoder": "resnet18"}), ("maskrcnn", {"backbone": "resnet18"})):
        flag, path = args[arch]
        assert flag == "--weights-backbone" and path == w / R18
        config, plan = weights.plan_init(arch, models.default_config(arch, **cfg), cfg, None, str(path))
        report = weights.apply_init(models.build_model(config), arch, config, plan)
        assert report["num_loaded"] > 50 and report["fresh"] == [] and config["pretrained"] is True


@pytest.mark.slow
def test_notebook_runs_on_a_tiny_synthetic_set(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    _clear_nb_env(monkeypatch)
    work, data, submission = tmp_path / "work", tmp_path / "data", tmp_path / "out" / "submission.csv"
    env = {"NB_REPO_DIR": REPO, "NB_WORK_DIR": work, "NB_DATA_DIR": data, "NB_SUBMISSION": submission,
           "NB_SYN_TRAIN": 10, "NB_SYN_TEST": 3, "NB_SYN_MIN_SIDE": 128, "NB_SYN_MAX_SIDE": 160,
           "NB_VAL_FRACTION": 0.3, "NB_IMAGE_SIZE": 96, "NB_EPOCHS": 1, "NB_MAX_STEPS_PER_EPOCH": 1,
           "NB_BATCH_SIZE": 2, "NB_UNET_BATCH_SIZE": 2, "NB_VAL_IMAGES": 2, "NB_PREP_PROCESSES": 1, "NB_WORKERS": 0,
           "NB_NUM_GPUS": 1, "NB_REPORT_IMAGES": 2, "NB_SHOW_IMAGES": 2, "NB_TENSORBOARD": 0,
           "NB_TUNE_GRID": json.dumps({"score_thresh": [0.05, 0.3], "mask_thresh": [0.45]}),
           "OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1}  # WEIGHTS auto, no WEIGHTS_DIR: random weights
    for k, v in env.items():
        monkeypatch.setenv(k, str(v))  # the kernel, and every command it runs, inherits these

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
    finally:
        nbformat.write(nb, tmp_path / "executed.ipynb")  # kept for a look when something fails

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "not every code cell ran"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    text = "\n".join(o.get("text", "") for c in code for o in c.outputs if o.output_type == "stream")
    for model in ("unet", "maskrcnn", "deepmac"):
        assert "epoch 1/1" in text and f"{model}: 1 epoch(s)" in text, model  # tqdm bars and summaries inline
        assert f"{model} starts from: random weights" in text, model
        assert (work / model / "curves.png").is_file()
    images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3 + 2, "training curves and report overlays are shown"

    # 05 predicted the cache's val split (with its ground truth) and the test images
    assert (work / "predictions_val" / "gt.csv").is_file()
    assert (work / "predictions_test" / "predictions.parquet").is_file()
    tuned = json.loads((work / "submission" / "params.json").read_text())  # 06 --tune-on: chosen on val
    assert tuned["params"]["score_thresh"] in (0.05, 0.3) and tuned["params"]["mask_thresh"] == 0.45
    chosen = tuned["ensemble"]["models"]
    assert chosen and set(chosen) <= {"unet", "maskrcnn", "deepmac"}

    # the scores table: each model, all fused, and the chosen combination when it differs, on val and test
    scores = pd.read_csv(work / "scores.csv").set_index(["split", "model"])
    all_equal = chosen == ["unet", "maskrcnn", "deepmac"] and set(tuned["ensemble"]["weights"]) == {1.0}
    rows = {"unet", "maskrcnn", "deepmac", "ensemble"} | (set() if all_equal else {"submission"})
    n_val = int((pd.read_parquet(work / "prepared" / "index.parquet")["split"] == "val").sum())
    for split, n_images in (("val", n_val), ("test", 3)):
        assert set(scores.loc[split].index) == rows, split
        for model in rows:
            s = scores.loc[(split, model)]
            assert 0.0 <= s["kaggle"] <= 1.0 and 0.0 <= s["AP"] <= 1.0 and s["num_images"] == n_images, (split, model)
        marked = scores.loc[split].index[scores.loc[split]["submitted"]].tolist()
        assert marked == ["ensemble" if all_equal else "submission"], split
    assert any("maskrcnn" in o.get("data", {}).get("text/html", "") and "kaggle" in o["data"]["text/html"]
               for c in code for o in c.outputs)

    # submission.csv where NB_SUBMISSION said, valid against the test images, and the notebook's own check said so
    from lib import submission_file as lsub
    from lib.kaggle_data import list_test_images

    test_images = list_test_images(data, progress=False)
    sizes = {i.image_id: (i.orig_height, i.orig_width) for i in test_images.itertuples(index=False)}
    assert lsub.validate_submission(submission, test_images["image_id"], 512, sizes) == []
    assert set(pd.read_csv(submission, dtype=str)["ImageId"]) == set(test_images["image_id"])
    assert f"{submission}: VALID" in text
