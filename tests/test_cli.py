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


SCRIPTS = ["01_prepare_data.py", "02_train_unet.py", "03_train_maskrcnn.py", "04_train_deepmac.py", "05_predict.py",
           "06_make_submission.py"]
# each script's settings dataclass, the flags it must be given, and the defaults the script sets itself
SETTINGS = {"01_prepare_data.py": ("lib.prepared", "PrepareSettings", [], {}),
            "02_train_unet.py": ("lib.engine", "TrainSettings", [],
                                 {"lr": 3e-4, "batch_size": 8, "epochs": 30, "clip_grad": 5.0}),
            "03_train_maskrcnn.py": ("lib.engine", "TrainSettings", [], {"clip_grad": 10.0,
                                                                         "aspect_ratio_group_factor": 3}),
            "04_train_deepmac.py": ("lib.engine", "TrainSettings", [], {"clip_grad": 10.0,
                                                                        "aspect_ratio_group_factor": 3}),
            "05_predict.py": ("lib.predict", "PredictSettings", ["--checkpoints", "a"], {}),
            "06_make_submission.py": ("lib.make_submission", "SubmissionSettings", [], {})}


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_default_has_one_home_the_stage_settings(script):
    """A flag named as a field of the stage's settings dataclass parses, unset, to that field's default (or the
    default the script sets on purpose), and the settings built from no flags are those defaults."""
    import importlib

    module, name, argv, own = SETTINGS[script]
    cls = getattr(importlib.import_module(module), name)
    defaults = cli.field_defaults(cls)
    args = vars(stage_module(script).get_args_parser().parse_args(argv))
    shared = sorted(set(defaults) & set(args))
    assert len(shared) >= 10, shared
    assert {k: args[k] for k in shared} == {k: own.get(k, defaults[k]) for k in shared}
    assert set(own) <= set(shared)


def test_field_and_parameter_defaults_and_settings_of():
    from dataclasses import dataclass, field

    @dataclass
    class S:
        a: int
        b: float = 0.5
        c: list = field(default_factory=lambda: [1])

    assert cli.field_defaults(S) == {"b": 0.5, "c": [1]}
    assert cli.parameter_defaults(lambda x, y=2, *, z="q": None) == {"y": 2, "z": "q"}
    import argparse

    s = cli.settings_of(S, argparse.Namespace(a=3, b=1.5, other=9), c=[7])
    assert s == S(a=3, b=1.5, c=[7])
    assert cli.settings_of(S, argparse.Namespace(a=1)) == S(a=1)  # a field that is no flag keeps its default


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_six_scripts_are_alike(script):
    """Same shebang, docstring shape, parser (the docstring's first paragraph as description, the rest with the
    examples as epilog, one help formatter), ``get_args_parser`` / ``main`` / ``__main__`` guard."""
    text = (Path(__file__).resolve().parents[1] / script).read_text()
    assert text.startswith(f'#!/usr/bin/env python3\n"""Stage {script[:2]}: ')
    assert "\nExamples:\n" in text and "from __future__ import annotations\n" in text
    assert "\ndef get_args_parser() -> argparse.ArgumentParser:\n    p = cli.script_parser(__doc__)\n" in text
    assert "\ndef main(args) -> int:\n" in text
    assert text.endswith('\nif __name__ == "__main__":\n    sys.exit(main(get_args_parser().parse_args()))\n')
    mod = stage_module(script)
    p = mod.get_args_parser()
    assert p.formatter_class is cli.HelpFormatter
    assert p.description == mod.__doc__.strip().split("\n\n")[0] and "Examples:" in p.epilog
    assert "  python " in p.format_help()  # the examples keep their lines


def test_bad_input_exits_with_one_line_and_library_errors_keep_their_traceback(monkeypatch):
    import json

    monkeypatch.delenv("IMAT_TRACEBACK", raising=False)
    with pytest.raises(SystemExit, match=r"^05: error: --params file not found: x\.json$"):
        with cli.bad_input_exits("05"):
            raise ValueError("--params file not found: x.json")
    with pytest.raises(json.JSONDecodeError):  # raised inside the standard library: a bug, not bad input
        with cli.bad_input_exits("05"):
            json.loads("{")
    monkeypatch.setenv("IMAT_TRACEBACK", "1")
    with pytest.raises(ValueError, match="bad"):
        with cli.bad_input_exits("05"):
            raise ValueError("bad")


def test_raised_by_project_tells_our_messages_from_library_errors(tmp_path):
    """05/06 print our own ValueErrors as one line; one raised inside a library keeps its traceback."""
    import pandas as pd

    import json

    from lib import rle

    with pytest.raises(ValueError, match="not sorted") as ours:
        rle.decode("5 3 1 2", (4, 4))
    assert cli.raised_by_project(ours.value)
    with pytest.raises(ValueError) as theirs:
        json.loads("{")
    assert not cli.raised_by_project(theirs.value)
    with pytest.raises(FileNotFoundError) as missing:
        pd.read_parquet(tmp_path / "missing.parquet")
    assert not cli.raised_by_project(missing.value)


def test_mask_categories_flag_and_its_older_name():
    p = stage_module("04_train_deepmac.py").get_args_parser()
    assert p.parse_args(["--mask-categories", "garments"]).mask_categories == "garments"
    assert p.parse_args(["--mask-classes", "parts"]).mask_categories == "parts"
    assert p.parse_args([]).mask_categories is None
