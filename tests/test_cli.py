"""lib/cli.py: the training scripts' flags and the model config they set."""
from pathlib import Path

import pytest

from conftest import stage_module
from lib import cli


def test_flags_map_to_model_config():
    mod = stage_module("04_train_deepmac.py")
    a = mod.get_args_parser().parse_args(["--backbone", "resnet34", "--anchor-sizes", "16", "32", "64/96", "128",
                                          "256", "--aspect-ratios", "0.5", "1", "--mask-head-depth", "2",
                                          "--class-specific-masks", "--detections-per-img", "50"])
    o = cli.detector_overrides(a)
    assert o["anchor_sizes"] == [[16], [32], [64, 96], [128], [256]]
    assert o["aspect_ratios"] == [[0.5, 1.0]] * 5
    assert o["class_agnostic_masks"] is False and o["mask_head_depth"] == 2 and o["box_detections_per_img"] == 50
    assert "min_size" not in o  # unset flags keep the model's defaults
    from lib.models import default_config

    assert default_config("deepmac", **o)["backbone"] == "resnet34"
    d = stage_module("03_train_maskrcnn.py").get_args_parser().parse_args([])
    assert d.out_dir == Path("work/maskrcnn") and d.prepared_dir == Path("work/prepared") and d.amp == "auto"
    assert stage_module("02_train_unet.py").get_args_parser().parse_args([]).out_dir == Path("work/unet")
    with pytest.raises(ValueError, match="bad anchor sizes"):
        cli.parse_levels(["16", "x"])
    m = stage_module("03_train_maskrcnn.py").get_args_parser()
    assert cli.detector_overrides(m.parse_args(["--class-agnostic-masks"]))["class_agnostic_masks"] is True
    assert "class_agnostic_masks" not in cli.detector_overrides(m.parse_args([]))
    # --scale-range: factors pass through; pixel sizes (> 8) become factors of the min size
    assert cli.train_scale_range(None, 800) is None
    assert cli.train_scale_range([0.6, 1.0], 800) == [0.6, 1.0]
    assert cli.train_scale_range([480, 800], 800) == [0.6, 1.0]
    with pytest.raises(ValueError, match="0 < LO <= HI"):
        cli.train_scale_range([1.0, 0.5], 800)


def test_keep_epochs_and_starting_weight_flags():
    p = stage_module("03_train_maskrcnn.py").get_args_parser()
    a = p.parse_args(["--keep-epochs", "8", "10", "12", "--weights", "coco"])
    assert a.keep_epochs == [8, 10, 12] and a.weights == "coco" and a.weights_backbone is None
    assert p.parse_args([]).keep_epochs == []
    assert p.parse_args(["--pretrained"]).weights_backbone == "imagenet"  # the alias
    assert p.parse_args(["--weights-backbone", "w/resnet50-0676ba61.pth"]).weights_backbone == "w/resnet50-0676ba61.pth"


@pytest.mark.parametrize("script", ["01_prepare_data.py", "02_train_unet.py", "03_train_maskrcnn.py",
                                    "04_train_deepmac.py", "05_predict.py", "06_make_submission.py"])
def test_help_says_each_default_once(script):
    """--help printed two defaults for 8 flags of 01 and 06 ("(default: <data-dir>/train.csv) (default: None)"):
    a default written in the help text is not repeated, and None / False / [] are not printed."""
    p = stage_module(script).get_args_parser()
    fmt = p._get_formatter()
    for a in p._actions:
        text = fmt._get_help_string(a) or ""
        assert text.count("(default:") <= 1, (a.option_strings, text)
    flat = " ".join(p.format_help().split())
    for empty in ("(default: None)", "(default: False)", "(default: [])"):
        assert empty not in flat
    if script == "01_prepare_data.py":  # the formatter adds the defaults it should
        assert "(default: 1024)" in flat
    if script == "06_make_submission.py":
        assert "(default: 0.5)" in flat and "512 for 2019 and long:1024 for 2020" in flat


def test_submission_mask_size_flag(capsys):
    """06's --mask-size: unset = the edition's (and, with --validate, the size the file was written at); N,
    0 or long:N; anything else is argparse's error saying the forms."""
    p = stage_module("06_make_submission.py").get_args_parser()
    assert p.parse_args([]).mask_size is None
    assert [p.parse_args(["--mask-size", v]).mask_size for v in ("512", "0", "long:1024")] == [512, 0, "long:1024"]
    with pytest.raises(SystemExit):
        p.parse_args(["--mask-size", "long:x"])
    assert "argument --mask-size: mask size 'long:x': expected N (N x N masks)" in capsys.readouterr().err
