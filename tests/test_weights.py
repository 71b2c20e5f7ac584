"""lib/weights.py: starting weights from files, through the library and through the training scripts.

Stand-in files are made from the constructors torchvision uses for its published files, with random weights
(the same keys and shapes): ``resnet18-f37072fd.pth``, ``mobilenet_v3_large-8738ca79.pth``,
``maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth`` (ResNet-50 with FrozenBatchNorm2d, 91 classes) and
``maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth``.
"""
import importlib.util
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from torchvision.models.detection import MaskRCNN  # noqa: E402
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor  # noqa: E402
from torchvision.ops import misc as misc_nn_ops  # noqa: E402

from lib import checkpoint as lcheckpoint  # noqa: E402
from lib import files as lfiles  # noqa: E402
from lib import models  # noqa: E402
from lib import weights  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SMALL_DET = dict(min_size=64, max_size=64, rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=20)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """Stand-ins of torchvision's published files, under their published names."""
    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    made = {
        "resnet18": torchvision.models.resnet18(weights=None).state_dict(),
        "resnet34": torchvision.models.resnet34(weights=None).state_dict(),
        "mobilenet_v3": torchvision.models.mobilenet_v3_large(weights=None).state_dict(),
        # torchvision builds its COCO model with a frozen-BatchNorm ResNet-50 (no num_batches_tracked)
        "coco": MaskRCNN(_resnet_fpn_extractor(torchvision.models.resnet50(
            weights=None, norm_layer=misc_nn_ops.FrozenBatchNorm2d), 3), num_classes=91).state_dict(),
        "coco_v2": torchvision.models.detection.maskrcnn_resnet50_fpn_v2(weights=None,
                                                                          weights_backbone=None).state_dict(),
    }
    names = {**weights.BACKBONE_FILES, "coco": weights.COCO_FILES["resnet50"],
             "coco_v2": weights.COCO_FILES["resnet50_v2"]}
    out = {}
    for key, state in made.items():
        out[key] = d / names[key]
        torch.save(state, out[key])
    return out


def _init(arch, start=None, start_backbone=None, **cfg):
    """Build ``arch`` from ``cfg`` and load ``--weights start`` / ``--weights-backbone start_backbone``."""
    config = models.default_config(arch, **cfg)
    config, plan = weights.plan_init(arch, config, cfg, start, start_backbone)
    model = models.build_model(config)
    report = weights.apply_init(model, arch, config, plan)
    return model, config, report


def _assert_equal_to_file(model_state, file_state, prefix="", skip=()):
    n = 0
    for k, v in file_state.items():
        if (k.endswith("num_batches_tracked") and prefix + k not in model_state) or k.startswith(skip):
            continue  # (frozen BatchNorm has no counter)
        assert torch.equal(model_state[prefix + k], v), k
        n += 1
    return n


# --------------------------------------------------------------------------------------------- backbones
@pytest.mark.parametrize("arch,name,prefix,file_prefix", [
    ("maskrcnn", "resnet18", "backbone.body.", ""),
    ("deepmac", "resnet18", "backbone.body.", ""),
    ("maskrcnn", "mobilenet_v3", "backbone.body.", "features."),
    ("unet", "resnet18", "net.encoder.", ""),
])
def test_imagenet_file_fills_the_backbone_and_nothing_else(files, arch, name, prefix, file_prefix):
    cfg = {"encoder": name} if arch == "unet" else {"backbone": name, **SMALL_DET}
    if name == "mobilenet_v3":
        cfg["anchor_sizes"] = None
    torch.manual_seed(0)
    fresh = models.build_model(models.default_config(arch, pretrained=True, **cfg)).state_dict()
    torch.manual_seed(0)
    model, config, report = _init(arch, start_backbone=str(files[name]), **cfg)
    state = torch.load(files[name], weights_only=True)
    own = model.state_dict()
    body = {k[len(file_prefix):]: v for k, v in state.items() if k.startswith(file_prefix)
            and not k.startswith(("fc.", "classifier."))}
    assert _assert_equal_to_file(own, body, prefix) == report["num_loaded"] > 50
    assert report["unused"] == sorted(k for k in state if k.startswith(("fc.", "classifier.")))
    assert report["fresh"] == [] and report["flag"] == "--weights-backbone" and report["kind"] == "backbone"
    # everything outside the backbone is exactly the fresh initialisation (same seed)
    outside = [k for k in own if not k.startswith(prefix)]
    assert outside and all(torch.equal(own[k], fresh[k]) for k in outside)
    assert config["pretrained"] is True
    if arch != "unet":  # torchvision's convention: frozen BatchNorm, the first stages frozen
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.backbone.body.modules())
        assert any(not p.requires_grad for p in model.backbone.body.parameters())


def test_imagenet_by_name_comes_from_the_torch_cache(files, tmp_path, monkeypatch):
    torch.hub.set_dir(str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("download attempted")))
    try:
        (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
        shutil.copy(files["resnet18"], tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
        _, _, report = _init("maskrcnn", start_backbone="imagenet", **{"backbone": "resnet18", **SMALL_DET})
        assert report["file"] == str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
        assert report["source"] == "imagenet" and report["num_loaded"] == 100
    finally:
        torch.hub.set_dir(str(Path.home() / ".cache" / "torch" / "hub"))


def test_imagenet_by_name_offline_names_the_file_to_attach(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    torch.hub.set_dir(str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    try:
        for arch, cfg, name in (("maskrcnn", {"backbone": "resnet50"}, "resnet50-0676ba61.pth"),
                                ("unet", {"encoder": "resnet34"}, "resnet34-b627a593.pth")):
            with pytest.raises(RuntimeError, match=rf"{name} is not in the torch cache.*could not be downloaded.*"
                                                   rf"--weights-backbone /path/to/{name}"):
                weights.plan_init(arch, models.default_config(arch, **cfg), cfg, None, "imagenet")
        with pytest.raises(RuntimeError, match="maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth.*--weights /path/to/"):
            weights.plan_init("maskrcnn", models.default_config("maskrcnn"), {}, "coco", None)
    finally:
        torch.hub.set_dir(str(Path.home() / ".cache" / "torch" / "hub"))
    with pytest.raises(ValueError, match="no torchvision ImageNet file for 'efficientnet-b0'"):
        weights.plan_init("unet", models.default_config("unet", encoder="efficientnet-b0"), {}, None, "imagenet")
    with pytest.raises(ValueError, match="COCO Mask R-CNN weights for the backbones.*not 'resnet18'"):
        weights.plan_init("maskrcnn", models.default_config("maskrcnn", backbone="resnet18"), {}, "coco", None)
    with pytest.raises(ValueError, match="--weights coco is torchvision's COCO Mask R-CNN, for 03/04"):
        weights.plan_init("unet", models.default_config("unet"), {}, "coco", None)


# --------------------------------------------------------------------------------------------- COCO detectors
CLASS_COUNT = ["roi_heads.box_predictor.bbox_pred.bias", "roi_heads.box_predictor.bbox_pred.weight",
               "roi_heads.box_predictor.cls_score.bias", "roi_heads.box_predictor.cls_score.weight",
               "roi_heads.mask_predictor.mask_fcn_logits.bias", "roi_heads.mask_predictor.mask_fcn_logits.weight"]


@pytest.mark.parametrize("backbone,key", [("resnet50", "coco"), ("resnet50_v2", "coco_v2")])
def test_coco_file_loads_everything_but_the_class_count_layers(files, backbone, key):
    model, config, report = _init("maskrcnn", start=str(files[key]), backbone=backbone, **SMALL_DET)
    state = torch.load(files[key], weights_only=True)
    own = model.state_dict()
    n = _assert_equal_to_file(own, state, skip=tuple(CLASS_COUNT))
    assert n == report["num_loaded"] and report["fresh"] == CLASS_COUNT and report["unused"] == CLASS_COUNT
    assert own["roi_heads.box_predictor.cls_score.weight"].shape == (47, 1024)
    assert own["roi_heads.mask_predictor.mask_fcn_logits.weight"].shape[0] == 47
    assert state["roi_heads.box_predictor.cls_score.weight"].shape == (91, 1024)
    assert config["pretrained"] is True and report["kind"] == "coco"


def test_coco_file_into_deepmac_keeps_the_hourglass_head_fresh(files):
    torch.manual_seed(3)
    fresh = models.build_model(models.default_config("deepmac", backbone="resnet50", pretrained=True,
                                                      **SMALL_DET)).state_dict()
    torch.manual_seed(3)
    model, _, report = _init("deepmac", start=str(files["coco"]), backbone="resnet50", **SMALL_DET)
    state = torch.load(files["coco"], weights_only=True)
    own = model.state_dict()
    mask_keys = [k for k in own if k.startswith(("roi_heads.mask_head.", "roi_heads.mask_predictor."))]
    assert mask_keys and set(mask_keys) <= set(report["fresh"])
    assert all(torch.equal(own[k], fresh[k]) for k in mask_keys)
    n = _assert_equal_to_file(own, state, skip=("roi_heads.mask_head.", "roi_heads.mask_predictor.",
                                                "roi_heads.box_predictor."))
    assert n == report["num_loaded"] and set(report["loaded"]) == {"backbone.body", "backbone.fpn", "rpn.head",
                                                                   "roi_heads.box_head"}
    assert any(k.startswith("roi_heads.mask_head.") for k in report["unused"])


def test_old_torchvision_key_names_are_upgraded(files, tmp_path):
    """The published COCO file predates torchvision's renames (rpn.head.conv, mask_fcnN)."""
    state = torch.load(files["coco"], weights_only=True)
    old = {}
    for k, v in state.items():
        k = k.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
        for i in range(4):
            k = k.replace(f"roi_heads.mask_head.{i}.0.", f"roi_heads.mask_head.mask_fcn{i + 1}.")
        old[k] = v
    assert "rpn.head.conv.weight" in old and "roi_heads.mask_head.mask_fcn1.weight" in old
    path = tmp_path / "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"
    torch.save(old, path)
    model, _, report = _init("maskrcnn", start=str(path), backbone="resnet50", **SMALL_DET)
    own = model.state_dict()
    assert torch.equal(own["rpn.head.conv.0.0.weight"], state["rpn.head.conv.0.0.weight"])
    assert torch.equal(own["roi_heads.mask_head.3.0.weight"], state["roi_heads.mask_head.3.0.weight"])
    assert report["fresh"] == CLASS_COUNT


# --------------------------------------------------------------------------------------------- bad files
def test_bad_files_are_refused_naming_the_file_and_key(files, tmp_path):
    det = {"backbone": "resnet18", **SMALL_DET}
    cfg = models.default_config("maskrcnn", **det)
    with pytest.raises(FileNotFoundError, match="weights file not found: .*nope.pth"):
        weights.plan_init("maskrcnn", cfg, det, None, str(tmp_path / "nope.pth"))
    truncated = tmp_path / "resnet18-truncated.pth"
    truncated.write_bytes(files["resnet18"].read_bytes()[:100_000])
    with pytest.raises(ValueError, match=f"{truncated}: not a readable weights file"):
        weights.plan_init("maskrcnn", cfg, det, None, str(truncated))
    foreign = tmp_path / "foreign.pth"
    torch.save([1, 2, 3], foreign)
    with pytest.raises(ValueError, match=f"{foreign}: not a weights file .*got list"):
        weights.plan_init("maskrcnn", cfg, det, str(foreign), None)
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(ValueError, match="notes.pth: not a readable weights file"):
        weights.plan_init("maskrcnn", cfg, det, str(text), None)
    # the wrong backbone: resnet34's extra blocks fit nothing in a resnet18, resnet18 lacks resnet34's
    with pytest.raises(ValueError, match=r"resnet34-b627a593.pth: \d+ key\(s\) of the file fit no parameter of "
                                         r"the model's backbone.body, e.g. \['layer1.2.conv1.weight'"):
        _init("maskrcnn", start_backbone=str(files["resnet34"]), **det)
    with pytest.raises(ValueError, match=r"resnet18-f37072fd.pth: the file has no 'backbone.body.layer1.2"):
        _init("maskrcnn", start_backbone=str(files["resnet18"]), **{**det, "backbone": "resnet34"})
    # a shape that does not fit outside the class-count layers names the key and both shapes
    bad = torch.load(files["resnet18"], weights_only=True)
    bad["layer2.0.conv1.weight"] = torch.zeros(128, 64, 5, 5)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"'layer2.0.conv1.weight' has shape \(128, 64, 5, 5\) in the file but "
                                         r"\(128, 64, 3, 3\) in the model"):
        _init("maskrcnn", start_backbone=str(tmp_path / "bad.pth"), **det)
    # a detector file is not a backbone file, and the two flags exclude each other
    with pytest.raises(ValueError, match=r"\d+ key\(s\) of the file fit no parameter of the model's backbone.body, "
                                         r"e.g. \['backbone.body.conv1.weight'"):
        _init("maskrcnn", start_backbone=str(files["coco"]), **{**det, "backbone": "resnet50"})
    with pytest.raises(ValueError, match="--weights and --weights-backbone together"):
        weights.plan_init("maskrcnn", cfg, det, str(files["coco"]), str(files["resnet18"]))


# --------------------------------------------------------------------------------------------- fine-tuning configs
def test_fine_tune_config_keeps_the_checkpoint_model_and_refuses_other_architectures():
    saved = models.default_config("maskrcnn", backbone="resnet18", min_size=160, num_classes=47,
                                  anchor_sizes=[[16], [32], [64], [128], [256]])
    here = models.default_config("maskrcnn", num_classes=12, box_score_thresh=0.1)
    out = weights.fine_tune_config(saved, here, {"num_classes": 12, "box_score_thresh": 0.1}, "ck.pth")
    assert out["backbone"] == "resnet18" and out["min_size"] == 160 and out["anchor_sizes"] == saved["anchor_sizes"]
    assert out["num_classes"] == 12 and out["box_score_thresh"] == 0.1
    with pytest.raises(ValueError, match=r"ck.pth: this run's model differs from the checkpoint's beyond the "
                                         r"class-count layers \(backbone: 'resnet34' here, 'resnet18'"):
        weights.fine_tune_config(saved, here, {"backbone": "resnet34"}, "ck.pth")
    with pytest.raises(ValueError, match="a checkpoint of arch 'maskrcnn'; --weights needs a 'deepmac'"):
        weights.fine_tune_config(saved, models.default_config("deepmac"), {}, "ck.pth")


def test_class_count_layers_start_fresh_when_the_class_count_differs():
    torch.manual_seed(0)
    src = models.build_model(models.default_config("maskrcnn", backbone="resnet18", num_classes=47, **SMALL_DET))
    torch.manual_seed(1)
    dst = models.build_model(models.default_config("maskrcnn", backbone="resnet18", num_classes=12, **SMALL_DET))
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    report = weights.load_weights(dst, src.state_dict(), "src.pth")
    assert report["fresh"] == CLASS_COUNT
    own, theirs = dst.state_dict(), src.state_dict()
    for k in own:
        assert torch.equal(own[k], before[k] if k in CLASS_COUNT else theirs[k]), k


# --------------------------------------------------------------------------------------------- through the scripts
SCRIPTS = {"unet": "02_train_unet.py", "maskrcnn": "03_train_maskrcnn.py", "deepmac": "04_train_deepmac.py"}
TINY = {
    "unet": ["--encoder", "resnet18", "--image-size", "64", "--decoder-channels", "32", "16", "16", "8", "8"],
    "maskrcnn": ["--min-size", "64", "--max-size", "64", "--anchor-sizes", "16", "32", "64", "128", "256",
                 "--rpn-post-nms-train", "50", "--rpn-post-nms-test", "20", "--box-batch-size-per-image", "32",
                 "--detections-per-img", "10"],
}
TINY["deepmac"] = TINY["maskrcnn"] + ["--mask-roi-size", "8", "--mask-head-width", "16", "--mask-head-depth", "1",
                                      "--mask-head-stacks", "1"]


def _train(arch, cache, out, *extra):
    """One step of the stage script at lr 0 (so the saved weights are the starting weights); bad input ends it
    with SystemExit ``<stage>: error: <message>`` (lib.cli.bad_input_exits)."""
    spec = importlib.util.spec_from_file_location(f"stage_{arch}", REPO / SCRIPTS[arch])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    args = mod.get_args_parser().parse_args([
        "--prepared-dir", str(cache), "--out-dir", str(out), "--workers", "0", "--batch-size", "1",
        "--max-steps-per-epoch", "1", "--epochs", "1", "--max-val-images", "1", "--threads", "1",
        "--lr", "0", "--warmup-steps", "0", *TINY[arch], *extra])
    mod.main(args)
    return lfiles.read_json(out / "meta.json"), torch.load(out / "checkpoint.pth", weights_only=True)


@pytest.mark.parametrize("arch", ["unet", "maskrcnn"])
def test_scripts_start_from_a_backbone_file_and_record_it(arch, files, prepared_set, tmp_path, capsys):
    extra = [] if arch == "unet" else ["--backbone", "resnet18"]
    meta, ck = _train(arch, prepared_set, tmp_path / arch, "--weights-backbone", str(files["resnet18"]), *extra)
    assert f"--weights-backbone {files['resnet18']}: " in capsys.readouterr().out
    init = meta["init"]
    assert init["flag"] == "--weights-backbone" and init["file"] == str(files["resnet18"])
    assert init["num_loaded"] == (120 if arch == "unet" else 100) and init["unused"] == ["fc.bias", "fc.weight"]
    assert ck["init"] == init and meta["config"]["pretrained"] is True
    state = torch.load(files["resnet18"], weights_only=True)
    prefix = "net.encoder." if arch == "unet" else "backbone.body."
    params = {n for n, _ in lcheckpoint.load_checkpoint(tmp_path / arch / "checkpoint.pth")[0].named_parameters()}
    for k, v in state.items():  # (the UNet's BatchNorm statistics move in the training step; its weights do not)
        if not k.startswith("fc.") and prefix + k in (params if arch == "unet" else ck["model"]):
            assert torch.equal(ck["model"][prefix + k], v), k


def test_deepmac_script_starts_from_the_coco_file(files, prepared_set, tmp_path):
    meta, ck = _train("deepmac", prepared_set, tmp_path / "dm", "--weights", str(files["coco"]),
                      "--backbone", "resnet50")
    state = torch.load(files["coco"], weights_only=True)
    assert meta["init"]["kind"] == "coco" and meta["init"]["num_loaded"] == 291
    for k in ("backbone.body.layer4.2.conv3.weight", "backbone.fpn.layer_blocks.3.0.weight",
              "rpn.head.cls_logits.weight", "roi_heads.box_head.fc7.weight"):
        assert torch.equal(ck["model"][k], state[k]), k
    assert ck["model"]["roi_heads.box_predictor.cls_score.weight"].shape == (47, 1024)
    model, _ = lcheckpoint.load_checkpoint(tmp_path / "dm" / "best.pth")  # rebuilds with frozen BatchNorm
    assert any(isinstance(m, misc_nn_ops.FrozenBatchNorm2d) for m in model.modules())


def test_fine_tuning_from_our_checkpoint_through_the_script(prepared_set, tmp_path):
    first = tmp_path / "first"
    _, ck1 = _train("maskrcnn", prepared_set, first, "--backbone", "resnet18", "--lr", "1e-3")
    # no model flags: the checkpoint's model config is kept (resnet18, its sizes); every tensor loads
    meta, ck2 = _train("maskrcnn", prepared_set, tmp_path / "second", "--weights", str(first / "best.pth"),
                       "--min-size", "64", "--max-size", "64")
    assert meta["config"]["backbone"] == "resnet18" and meta["init"]["kind"] == "checkpoint"
    assert meta["init"]["fresh"] == [] and meta["init"]["num_loaded"] == len(ck1["model"])
    model, _ = lcheckpoint.load_checkpoint(first / "best.pth")
    params = [n for n, _ in model.named_parameters()]  # (BatchNorm statistics move in the training step)
    assert len(params) > 100
    for k in params:
        assert torch.equal(ck2["model"][k], ck1["model"][k]), k
    with pytest.raises(SystemExit, match="differs from the checkpoint's beyond the class-count layers "
                                          r"\(backbone: 'resnet34' here, 'resnet18' in the checkpoint\)"):
        _train("maskrcnn", prepared_set, tmp_path / "third", "--weights", str(first / "best.pth"),
               "--backbone", "resnet34")
    with pytest.raises(SystemExit, match="a checkpoint of arch 'maskrcnn'; --weights needs a 'deepmac'"):
        _train("deepmac", prepared_set, tmp_path / "fourth", "--weights", str(first / "best.pth"))
