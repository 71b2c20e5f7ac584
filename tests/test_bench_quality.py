"""bench/quality.py: its helpers, the GPU mode's refusal without CUDA, and a smoke run at the tiniest size."""
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from bench import quality  # noqa: E402
from lib.labels import CATEGORY_GROUPS  # noqa: E402
from lib.evaluator import group_scores  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def test_group_scores_average_the_classes_of_each_group():
    per_class = {"1_2": 0.5, 3: 1.0, "30": 0.2, 31: float("nan"), 45: 0.4}
    out = group_scores(per_class, CATEGORY_GROUPS)
    assert out["garments"] == pytest.approx(0.75)  # "1_2" -> category 1, and 3
    assert out["parts"] == pytest.approx(0.3)  # 30 and 45; nan skipped
    assert out["all"] == pytest.approx((0.5 + 1.0 + 0.2 + 0.4) / 4)
    assert np.isnan(group_scores({}, {"parts": (30,)})["parts"])


def test_group_iou_stats_and_group_gt(tmp_path):
    ious = np.array([0.9, 0.4, 0.6, 0.2])
    cats = np.array([0, 5, 30, 40])
    s = quality.group_iou_stats(ious, cats)
    assert s["all"] == {"n": 4, "mean_iou": pytest.approx(0.525), "iou50": 0.5, "iou75": 0.25}
    assert s["garments"]["n"] == 2 and s["garments"]["mean_iou"] == pytest.approx(0.65)
    assert s["parts"]["iou50"] == 0.5 and s["parts"]["iou75"] == 0.0
    empty = quality.group_iou_stats(np.zeros(0), np.zeros(0, np.int64))
    assert empty["parts"] == {"n": 0, "mean_iou": None, "iou50": None, "iou75": None}

    gt = tmp_path / "gt.csv"
    pd.DataFrame({"ImageId": ["a.jpg", "a.jpg", "b.jpg"], "EncodedPixels": ["1 2", "5 1", "3 3"],
                  "Height": [4, 4, 4], "Width": [4, 4, 4], "ClassId": ["6_1_2", "31", "27"]}).to_csv(gt, index=False)
    paths = quality.group_gt(gt, tmp_path)
    assert paths["all"] == gt
    g = pd.read_csv(paths["garments"], dtype=str)
    p = pd.read_csv(paths["parts"], dtype=str)
    assert g["ClassId"].tolist() == ["6_1_2"] and g["EncodedPixels"].tolist() == ["1 2"]
    assert p["ClassId"].tolist() == ["31", "27"] and p["ImageId"].tolist() == ["a.jpg", "b.jpg"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_gpu_mode_refuses_to_run_without_cuda(tmp_path):
    with pytest.raises(SystemExit, match="needs a CUDA device.*--cpu"):
        quality.main(quality.get_args_parser().parse_args(["--out", str(tmp_path / "q")]))
    assert not (tmp_path / "q").exists()


@pytest.mark.slow
def test_tiny_run_reports_every_model_group_and_measure(tmp_path):
    out = tmp_path / "q"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "bench/quality.py", "--tiny", "--out", str(out)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    rep = json.loads((out / "quality.json").read_text())
    assert {"mode", "env", "config", "data", "training", "scores", "scores_06", "deepmac_claim", "attributes",
            "commands", "timings", "seconds_total"} <= set(rep)
    assert rep["mode"] == "tiny" and rep["env"]["date"] and rep["env"]["cpu_count"]

    # four datasets from four seeds
    assert len({rep["data"][s]["seed"] for s in ("train", "val", "test", "pretrain")}) == 4
    runs = {"unet", "maskrcnn", "deepmac", "maskrcnn_garments", "maskrcnn_agnostic_garments", "deepmac_garments"}
    fine_tune = {"maskrcnn_finetune", "maskrcnn_scratch"}
    assert set(rep["training"]) == runs | fine_tune
    assert all(t["steps"] == 2 for t in rep["training"].values())  # the fixed budget: 1 epoch x 2 steps
    assert rep["training"]["maskrcnn"]["attr_head"] is True
    assert rep["training"]["maskrcnn_agnostic_garments"]["class_agnostic_masks"] is True
    assert rep["training"]["maskrcnn_garments"]["class_agnostic_masks"] is False
    assert rep["training"]["deepmac_garments"]["mask_categories"] is True

    # learning curves: val Kaggle at each validated step, for every run
    assert set(rep["learning_curves"]) == runs | fine_tune
    assert [s for s, _ in rep["learning_curves"]["maskrcnn_finetune"]] == [1, 2]
    assert all(0 <= v <= 1 for pts in rep["learning_curves"].values() for _, v in pts)
    assert (out / "learning_curves.png").is_file()
    # the fine-tuning run started from the pretraining run's checkpoint
    ft_meta = json.loads((out / "work" / "maskrcnn_finetune" / "meta.json").read_text())
    assert ft_meta["init"]["kind"] == "checkpoint" and ft_meta["init"]["fresh"] == []
    assert ft_meta["init"]["file"] == str(out / "work" / "maskrcnn" / "best.pth")
    assert ft_meta["data"]["prepared_dir"] == str(out / "work" / "prepared_pretrain")
    assert rep["fine_tune"]["steps"] == 2 and set(rep["fine_tune"]["val_kaggle_final"]) == {"fine_tuned", "scratch"}
    assert set(rep["floors"]) == {"maskrcnn", "deepmac", "unet", "submission"}
    assert rep["floors"]["unet"]["floor"] == 0.10

    models = runs | {"ensemble", "submission"}
    assert set(rep["scores"]) == models
    for s in rep["scores"].values():
        for g in ("all", "garments", "parts"):
            for k in ("kaggle", "AP"):
                assert s[g][k] is None or 0 <= s[g][k] <= 1
    assert {"unet", "maskrcnn", "deepmac", "ensemble"} <= set(rep["scores_06"])

    claim = rep["deepmac_claim"]
    assert claim["train_group"] == "garments" and claim["held_out_group"] == "parts"
    assert set(claim["oracle"]) == {"box_fill", "maskrcnn", "deepmac", "maskrcnn_garments",
                                    "maskrcnn_agnostic_garments", "deepmac_garments"}
    n_gt = len(pd.read_csv(out / "data" / "test" / "test_ground_truth.csv"))
    for name, o in claim["oracle"].items():
        for stats in [o] + ([o["init"]] if name != "box_fill" else []):  # trained, and freshly initialised
            assert stats["all"]["n"] == stats["garments"]["n"] + stats["parts"]["n"] == n_gt
            for g in ("all", "garments", "parts"):
                assert stats[g]["n"] == 0 or 0 <= stats[g]["mean_iou"] <= 1
    assert "init" not in claim["oracle"]["box_fill"]
    assert 0 < claim["oracle"]["box_fill"]["all"]["mean_iou"] <= 1

    at = rep["attributes"]
    assert at["run"] == "maskrcnn"
    assert {"oracle_boxes", "prior", "pipeline", "kaggle_attributes_on", "kaggle_attributes_off"} <= set(at)
    assert at["refit_in_checkpoint"]["steps"] == 400  # --attr-head refits best.pth by default
    assert at["oracle_boxes"]["num_instances"] == at["prior"]["num_instances"] > 0

    cmds = "\n".join(rep["commands"])
    assert "06_make_submission.py" in cmds and "--tune-on" in cmds and "--mask-categories garments" in cmds
    assert "--attr-head" in cmds
    md = (out / "quality.md").read_text()
    assert "DeepMAC claim" in md and "| ensemble |" in md and "Attributes" in md and "Fine-tuning" in md
    assert "Floors" in md and "Learning curves" in md


def test_cpu_mode_trains_detectors_in_bf16_only_where_the_cpu_has_it():
    """The CPU mode's detectors get --amp bf16 on a CPU with native bf16 and --amp off elsewhere; an ablation's
    pair has its own budget, half the detectors' steps."""
    def amp(cfg):
        return cfg["det"][cfg["det"].index("--amp") + 1]

    assert amp(quality.mode_config("cpu", True)) == "bf16" and amp(quality.mode_config("cpu", False)) == "off"
    assert quality.MODES["cpu"]["det"] == quality.mode_config("cpu", True)["det"]  # MODES itself unchanged
    assert "--amp" not in quality.mode_config("tiny", False)["det"]
    cpu = quality.mode_config("cpu", True)
    steps = {k: cpu[k]["epochs"] * cpu[k]["steps"] for k in ("det_budget", "ablation_budget")}
    assert steps == {"det_budget": 800, "ablation_budget": 400}


def test_ablation_mode_trains_a_pair_and_reports_the_difference(tmp_path):
    """--ablation: the same arch without and with the flags, the same steps, scored on the test seed; the report
    holds both, their difference and per-category AP, and the 'with' run got the flag."""
    rep = quality.main(quality.get_args_parser().parse_args(
        ["--tiny", "--ablation", "--ema-decay 0.9", "--out", str(tmp_path)]))["ablation"]
    assert rep["flags"] == ["--ema-decay", "0.9"] and rep["arch"] == "maskrcnn"
    assert set(rep["scores"]) == {"without", "with"}
    for k, v in rep["delta"].items():
        assert v == pytest.approx(rep["scores"]["with"]["all"][k] - rep["scores"]["without"]["all"][k])
    assert rep["training"]["with"]["steps"] == rep["training"]["without"]["steps"] > 0
    assert rep["runs"] == {"without": "base_maskrcnn", "with": "base_maskrcnn__ema-decay_0.9"}
    assert rep["trained"] == {"without": True, "with": True}
    with_meta = json.loads((tmp_path / "work" / "base_maskrcnn__ema-decay_0.9" / "meta.json").read_text())
    base_meta = tmp_path / "work" / "base_maskrcnn" / "meta.json"
    without_meta = json.loads(base_meta.read_text())
    assert with_meta["optimization"]["ema_decay"] == 0.9 and without_meta["optimization"]["ema_decay"] == 0.0
    assert (tmp_path / "ablation_base_maskrcnn__ema-decay_0.9.md").read_text().startswith(
        "### maskrcnn: without vs with `--ema-decay 0.9`")
    # On CPU the runs train one after another, each with both lanes' threads. A second feature under the same
    # --out keeps the baseline and its test predictions.
    base_pred = tmp_path / "work" / "pred_test_base_maskrcnn" / "meta.json"
    before, pred_before = base_meta.read_bytes(), base_pred.read_bytes()
    again = quality.main(quality.get_args_parser().parse_args(
        ["--tiny", "--ablation", "--ema-decay 0.8", "--out", str(tmp_path)]))["ablation"]
    assert again["trained"] == {"without": False, "with": True} and base_meta.read_bytes() == before
    assert base_pred.read_bytes() == pred_before and again["scores"]["without"] == rep["scores"]["without"]
    second = json.loads((tmp_path / "work" / "base_maskrcnn__ema-decay_0.8" / "meta.json").read_text())
    assert second["optimization"]["ema_decay"] == 0.8
    assert second["args"]["threads"] == with_meta["args"]["threads"] == without_meta["args"]["threads"] == 2
    md = (tmp_path / "ablation_base_maskrcnn__ema-decay_0.8.md").read_text()
    assert "the baseline `base_maskrcnn` and its predictions kept" in md
    # A baseline finished with another command than the mode gives it now (e.g. before a change of the mode) is
    # trained again, and its predictions made again (the 'with' run trains every time without --reuse).
    recorded = tmp_path / "work" / "base_maskrcnn.argv.json"
    assert json.loads(recorded.read_text())[0] == "03_train_maskrcnn.py"
    recorded.write_text(json.dumps(json.loads(recorded.read_text()) + ["--amp", "off"]))
    third = quality.main(quality.get_args_parser().parse_args(
        ["--tiny", "--ablation", "--ema-decay 0.8", "--out", str(tmp_path)]))["ablation"]
    assert third["trained"] == {"without": True, "with": True} and base_pred.read_bytes() != pred_before
    assert "--amp" not in json.loads(recorded.read_text())


def test_ablation_with_base_flags_measures_attributes_against_the_prior(tmp_path):
    """--ablation-base: both runs get those flags; with the attribute head each run's attribute F1 at the test
    seed's ground-truth boxes is reported beside the per-category prior's."""
    rep = quality.main(quality.get_args_parser().parse_args(
        ["--tiny", "--ablation-base=--attr-head --no-attr-prior --attr-refit-steps 0", "--ablation=--attr-prior",
         "--out", str(tmp_path)]))["ablation"]
    assert rep["base"] == ["--attr-head", "--no-attr-prior", "--attr-refit-steps", "0"]
    assert rep["flags"] == ["--attr-prior"]
    for name, prior_on in (("without", False), ("with", True)):
        ck = torch.load(tmp_path / "work" / rep["runs"][name] / "checkpoint.pth", weights_only=True)
        assert ck["config"]["attr_head"] is True and ck["config"]["attr_prior"] is prior_on
        a = rep["attributes"][name]
        assert a["oracle_boxes"]["num_instances"] == a["prior"]["num_instances"] == a["refit"]["num_instances"] > 0
        assert 0 <= a["oracle_boxes"]["micro_f1"] <= 1 and 0 <= a["refit"]["micro_f1"] <= 1
        assert a["tuned"]["num_instances"] == a["prior_tuned"]["num_instances"] == a["prior"]["num_instances"]
        assert a["val_instances"] > 0
    assert rep["attributes"]["with"]["prior"] == rep["attributes"]["without"]["prior"]
    md = (tmp_path / f"ablation_{rep['runs']['with']}.md").read_text()
    assert "(both runs: `--attr-head --no-attr-prior --attr-refit-steps 0`)" in md
    assert "Attributes at the test seed's ground-truth" in md
    assert "with's head refit on its frozen features" in md and "with thresholds tuned on val" in md
