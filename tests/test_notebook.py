"""notebooks/imaterialist_pipeline.ipynb: committed without outputs, settings from NB_* variables, and a run top to
bottom on a tiny synthetic set (01 -> 02/03/04 -> 05 val + test -> 06 tune + submission) in a temporary directory."""
import json
import os
import sys
from pathlib import Path

import pandas as pd
import pytest

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


def test_run_streams_output_and_raises_on_failure(monkeypatch, tmp_path, capsys):
    pytest.importorskip("IPython")
    ns = _settings(monkeypatch, tmp_path, REPO_DIR=REPO, WORK_DIR=tmp_path / "w", PRETRAINED=0)
    setup = [c for c in _read_notebook().cells if c.cell_type == "code"][1]
    exec(compile(setup.source, "set-up cell", "exec"), ns)
    capsys.readouterr()
    ns["run"](sys.executable, "-c", "import sys; print('to stdout'); print('to stderr', file=sys.stderr)")
    out = capsys.readouterr().out
    assert "to stdout" in out and "to stderr" in out and "[done in" in out
    with pytest.raises(RuntimeError, match=r"exit status 3(.|\n)*last words"):
        ns["run"](sys.executable, "-c", "print('last words'); raise SystemExit(3)")
    assert (tmp_path / "w").is_dir()  # commands run in WORK_DIR, created by the set-up cell


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
                   VAL_FRACTION="0.3", TTA_FLIP="1", PRETRAINED="0", IMAGE_SIZE="96", MASKRCNN_ARGS="--lr 0.01")
    assert ns["MODELS"] == ["unet", "maskrcnn"] and ns["EPOCHS"] == 2 and ns["VAL_EVERY"] == 2
    assert ns["VAL_FRACTION"] == 0.3 and ns["TTA_FLIP"] is True and ns["PRETRAINED"] is False
    assert ns["IMAGE_SIZE"] == 96 and ns["MODEL_ARGS"]["maskrcnn"][-2:] == ["--lr", "0.01"]
    assert "--anchor-sizes" in ns["MODEL_ARGS"]["maskrcnn"]  # tiny images: demo.sh's small detector


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
           "NB_BATCH_SIZE": 2, "NB_UNET_BATCH_SIZE": 2, "NB_VAL_IMAGES": 2, "NB_PREP_WORKERS": 1, "NB_WORKERS": 0,
           "NB_NUM_GPUS": 1, "NB_PRETRAINED": 0, "NB_REPORT_IMAGES": 2, "NB_SHOW_IMAGES": 2,
           "NB_TUNE_GRID": json.dumps({"score_thresh": [0.05, 0.3], "mask_thresh": [0.45]}),
           "OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1, "HF_HUB_OFFLINE": 1}
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
    from lib import submission as lsub

    test_images = lsub.list_test_images(data, progress=False)
    sizes = {i.image_id: (i.orig_height, i.orig_width) for i in test_images.itertuples(index=False)}
    assert lsub.validate_submission(submission, test_images["image_id"], 512, sizes) == []
    assert set(pd.read_csv(submission, dtype=str)["ImageId"]) == set(test_images["image_id"])
    assert f"{submission}: VALID" in text
