"""demo.sh end to end at a tiny size: 01 -> 02/03/04 (one step each) -> 05 -> 06, in a temporary directory."""
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO


@pytest.mark.slow
def test_demo_end_to_end_tiny(tmp_path):
    if shutil.which("bash") is None:
        pytest.skip("bash not available")
    work, data = tmp_path / "work", tmp_path / "data"
    env = {**os.environ, "WORK": str(work), "DATA": str(data), "DEMO_SYN_TRAIN": "10", "DEMO_SYN_TEST": "3",
           "DEMO_LONG_SIDE": "96", "DEMO_MAX_STEPS": "1", "DEMO_UNET_EPOCHS": "1", "DEMO_MASKRCNN_EPOCHS": "1",
           "DEMO_DEEPMAC_EPOCHS": "1", "DEMO_VAL_IMAGES": "2"}
    r = subprocess.run(["bash", str(REPO / "demo.sh")], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=1200)
    assert r.returncode == 0, f"demo.sh failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"

    from lib import submission_file as lsub
    from lib.kaggle_data import list_test_images

    sub_dir = work / "submission"
    images = list_test_images(data, progress=False)
    assert len(images) == 3
    sizes = {i.image_id: (i.orig_height, i.orig_width) for i in images.itertuples(index=False)}
    assert lsub.validate_submission(sub_dir / "submission.csv", images["image_id"], 512, sizes) == []
    sub = pd.read_csv(sub_dir / "submission.csv", dtype=str)
    assert set(sub["ImageId"]) == set(images["image_id"])

    saved = json.loads((sub_dir / "scores.json").read_text())
    scores, combo = saved["scores"], saved["submission"]
    # each model, all fused, and the combination chosen on val when it is not all three with equal weights
    all_equal = combo["models"] == ["unet", "maskrcnn", "deepmac"] and set(combo["weights"]) == {1.0}
    assert set(scores) == {"unet", "maskrcnn", "deepmac", "ensemble"} | (set() if all_equal else {"submission"})
    for s in scores.values():
        assert 0.0 <= s["kaggle"] <= 1.0 and s["num_images"] == 3
    # the choice was made on the val split's predictions and saved with the thresholds
    tuned = json.loads((sub_dir / "params.json").read_text())
    assert tuned["ensemble"] == combo and tuned["gt"] == str(work / "predictions_val" / "gt.csv")
    assert (work / "predictions_val" / "predictions.parquet").is_file()

    report = sub_dir / "report" / "index.html"
    assert report.is_file()
    for src in re.findall(r"<img src='([^']+)'", report.read_text()):
        assert (report.parent / src).is_file(), src

    # the demo prints each model's and the ensemble's score, and where the outputs are
    out = r.stdout
    for name in ("unet", "maskrcnn", "deepmac", "ensemble") + (() if all_equal else ("submission",)):
        assert re.search(rf"^\s+{name}\b.*kaggle \d\.\d{{4}}", out, re.M), name
    assert f"submission: {sub_dir / 'submission.csv'} (validated; models {combo['models']}" in out and f"report:     {report}" in out
    # it says its images are the easier demo preset, and the dataset records that preset
    assert "the easier 'demo' preset" in out and "synthetic 'demo' preset's images" in out
    assert json.loads((data / "synthetic.json").read_text())["params"]["preset"] == "demo"
    for d in ("unet", "maskrcnn", "deepmac"):
        assert (work / d / "best.pth").is_file() and (work / d / "curves.png").is_file()
    assert Path(work / "predictions" / "predictions.parquet").is_file()
