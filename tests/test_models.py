"""lib/models: the uniform interface of the UNet, Mask R-CNN and DeepMAC builders (tiny CPU models)."""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before smp/timm/huggingface_hub are imported

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

from lib import models  # noqa: E402
from lib.models import common, deepmac, maskrcnn, unet  # noqa: E402

ARCHS = ("unet", "maskrcnn", "deepmac")

# Small detectors: 128 px inputs, resnet18 FPN, anchors scaled to the image, few proposals.
TINY_DET = dict(
    backbone="resnet18", min_size=128, max_size=128, anchor_sizes=[[8], [16], [32], [64], [128]],
    rpn_pre_nms_top_n_train=200, rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_train=100,
    rpn_post_nms_top_n_test=50, box_batch_size_per_image=64, box_detections_per_img=10,
)
TINY = {
    "unet": dict(encoder="resnet18", min_size=128, max_size=128, decoder_channels=[64, 32, 16, 16, 8]),
    "maskrcnn": dict(TINY_DET),
    "deepmac": dict(TINY_DET, mask_head_width=16, mask_head_depth=2, mask_head_stacks=1, mask_roi_size=16),
}


def tiny_config(arch, **overrides):
    return models.default_config(arch, **{**TINY[arch], **overrides})


def build(arch, seed=0, **overrides):
    torch.manual_seed(seed)
    return models.build_model(tiny_config(arch, **overrides))


def batch(categories=(0, 30)):
    """Two images of different sizes: the first with one box-shaped instance per category, the second empty."""
    torch.manual_seed(1)
    images = [torch.rand(3, 96, 128), torch.rand(3, 128, 80)]
    rects = [(20, 10, 60, 40), (30, 50, 100, 90), (70, 5, 120, 45)]  # x1, y1, x2, y2
    masks = torch.zeros(len(categories), 96, 128, dtype=torch.uint8)
    for i, (x1, y1, x2, y2) in enumerate(rects[: len(categories)]):
        masks[i, y1:y2, x1:x2] = 1
    targets = [
        dict(boxes=torch.tensor(rects[: len(categories)], dtype=torch.float32).reshape(-1, 4),
             labels=torch.tensor(categories, dtype=torch.int64) + 1, masks=masks),
        dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.int64),
             masks=torch.zeros(0, 128, 80, dtype=torch.uint8)),
    ]
    return images, targets


# ---------------------------------------------------------------- configs


def test_default_configs_are_complete_json_and_strict():
    for arch in ARCHS:
        cfg = models.default_config(arch)
        assert cfg["arch"] == arch and cfg == models.ARCHS[arch].DEFAULT_CONFIG
        assert cfg["num_classes"] == 47 and cfg["pretrained"] is False and cfg["mask_categories"] is None
        assert {"min_size", "max_size"} <= set(cfg)
        assert json.loads(json.dumps(cfg)) == cfg
        assert cfg is not models.ARCHS[arch].DEFAULT_CONFIG  # a copy: callers may edit it
    assert models.default_config("deepmac")["mask_roi_size"] == 32
    assert models.default_config("maskrcnn")["mask_roi_size"] == 14
    assert models.default_config("maskrcnn", min_size=64)["min_size"] == 64
    with pytest.raises(ValueError, match="unknown config keys.*mask_head_width"):
        models.default_config("maskrcnn", mask_head_width=8)  # a DeepMAC-only key
    with pytest.raises(ValueError, match="unknown arch"):
        models.default_config("yolo")
    with pytest.raises(ValueError, match="no 'arch'"):
        models.build_model({"num_classes": 47})
    with pytest.raises(ValueError, match="arch"):
        models.ARCHS["maskrcnn"].build({"arch": "deepmac"})


@pytest.mark.parametrize("arch", ARCHS)
def test_weight_loading_facts_each_model_declares_fit_its_state_dict(arch):
    """What lib/weights.py reads from a model's module (lib.models.ARCHS) names that model's real layers."""
    mod = models.ARCHS[arch]
    cfg = {"class_agnostic_masks": False} if arch == "deepmac" else {}  # per-class masks: channels follow classes
    a = build(arch, num_classes=47, **cfg).state_dict()
    b = build(arch, num_classes=12, **cfg).state_dict()
    assert list(a) == list(b)
    # the class-count layers are exactly the tensors whose shape follows num_classes
    differ = [k for k in a if a[k].shape != b[k].shape]
    assert differ and differ == [k for k in a if k.startswith(mod.CLASS_COUNT_PREFIXES)]
    assert any(k.startswith(mod.BACKBONE_SCOPE) for k in a)
    assert mod.BACKBONE_CONFIG_KEY in mod.DEFAULT_CONFIG
    assert set(mod.ARCHITECTURE_KEYS) <= set(mod.DEFAULT_CONFIG) and "num_classes" not in mod.ARCHITECTURE_KEYS
    assert set(mod.BACKBONE_FILE_PREFIXES) <= set(maskrcnn.BACKBONES)
    assert all(any(k.startswith(p) for k in a) for p in mod.OWN_HEAD_PREFIXES)
    assert mod.TAKES_COCO_FILES == (arch != "unet") and bool(mod.OWN_HEAD_PREFIXES) == (arch == "deepmac")
    if mod.NEW_HEAD_PREFIXES:  # the attribute head: only with attr_head
        assert not any(k.startswith(mod.NEW_HEAD_PREFIXES) for k in a)
        assert any(k.startswith(mod.NEW_HEAD_PREFIXES) for k in build(arch, attr_head=True, **cfg).state_dict())


def test_train_scale_range_from_flag_values():
    # --scale-range: factors pass through; pixel sizes (> 8) become factors of the min size
    assert common.train_scale_range(None, 800) is None
    assert common.train_scale_range([0.6, 1.0], 800) == [0.6, 1.0]
    assert common.train_scale_range([480, 800], 800) == [0.6, 1.0]
    with pytest.raises(ValueError, match="--scale-range must be 0 < LO <= HI"):
        common.train_scale_range([1.0, 0.5], 800)


def test_bad_config_values_are_rejected():
    with pytest.raises(ValueError, match="unknown backbone"):
        models.build_model(tiny_config("maskrcnn", backbone="vgg"))
    with pytest.raises(ValueError, match="anchor_sizes needs 5 levels"):
        models.build_model(tiny_config("maskrcnn", anchor_sizes=[[8], [16]]))
    with pytest.raises(ValueError, match="mask_categories: 46"):
        models.build_model(tiny_config("deepmac", mask_categories=[0, 46]))
    with pytest.raises(ValueError, match="decoder_channels"):
        models.build_model(tiny_config("unet", decoder_channels=[16, 8]))


# ---------------------------------------------------------------- uniform interface, every arch


@pytest.mark.parametrize("arch", ARCHS)
def test_train_step_gives_finite_losses_and_gradients(arch):
    model = build(arch).train()
    images, targets = batch()
    losses = model(images, targets)
    expected = {"loss_ce", "loss_dice"} if arch == "unet" else {
        "loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    assert set(losses) == expected
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    assert all(v.item() > 0 for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    if arch != "unet":
        mask_grads = [p.grad for p in model.roi_heads.mask_head.parameters() if p.grad is not None]
        assert any(g.abs().sum() > 0 for g in mask_grads)


@pytest.mark.parametrize("arch", ARCHS)
def test_eval_output_format_and_state_dict_round_trip(arch):
    overrides = {} if arch == "unet" else {"box_score_thresh": 0.0}  # untrained scores are ~1/47
    model = build(arch, **overrides).eval()
    images, _ = batch()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for img, r in zip(images, out):
        h, w = img.shape[-2:]
        n = len(r["scores"])
        assert n > 0
        assert r["boxes"].shape == (n, 4) and r["boxes"].dtype == torch.float32
        assert r["labels"].shape == (n,) and r["labels"].dtype == torch.int64
        assert r["labels"].min() >= 1 and r["labels"].max() <= 46
        assert r["masks"].shape == (n, 1, h, w) and r["masks"].dtype == torch.float32
        assert r["masks"].min() >= 0 and r["masks"].max() <= 1
        assert (r["boxes"][:, 0] >= 0).all() and (r["boxes"][:, 2] <= w).all() and (r["boxes"][:, 3] <= h).all()
        if arch == "unet":
            assert r["semantic"].shape == (47, h, w)
            torch.testing.assert_close(r["semantic"].sum(0), torch.ones(h, w))
        else:
            assert "semantic" not in r

    # A checkpoint keeps the config as JSON: rebuilding from it gives the same modules and outputs.
    config = json.loads(json.dumps(tiny_config(arch, **overrides)))
    rebuilt = models.build_model(config)
    state = model.state_dict()
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in state.items()}
    rebuilt.load_state_dict(state)
    rebuilt.eval()
    with torch.no_grad():
        again = rebuilt(images)
    for a, b in zip(out, again):
        for key in a:
            torch.testing.assert_close(a[key], b[key])


@pytest.mark.parametrize("arch", ARCHS)
def test_images_without_instances_train(arch):
    model = build(arch).train()
    images, targets = batch()
    losses = model(images[1:], targets[1:])
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    if arch != "unet":
        assert losses["loss_mask"].item() == 0 and losses["loss_box_reg"].item() == 0


@pytest.mark.parametrize("pretrained", [False, True])
def test_building_never_downloads(pretrained, monkeypatch):
    """Weights come from files (lib/weights.py) after the build; no config makes the builders download."""
    import segmentation_models_pytorch.encoders as smp_encoders

    def no_download(*args, **kwargs):
        raise AssertionError("a weight download was attempted")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(smp_encoders, "hf_hub_download", no_download)
    for arch in ARCHS:
        build(arch, pretrained=pretrained)


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v3"])
def test_pretrained_detector_backbone_freezes_batchnorm_and_early_stages(backbone):
    """torchvision's convention for pretrained backbones: FrozenBatchNorm2d, trainable_backbone_layers stages train."""
    anchors = {"anchor_sizes": None} if backbone == "mobilenet_v3" else {}
    model = build("maskrcnn", backbone=backbone, pretrained=True, trainable_backbone_layers=2, **anchors)
    body = model.backbone.body
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())
    assert any(isinstance(m, torchvision.ops.FrozenBatchNorm2d) for m in body.modules())
    trains = {n.split(".")[0] for n, p in body.named_parameters() if p.requires_grad}
    frozen = {n.split(".")[0] for n, p in body.named_parameters() if not p.requires_grad}
    if backbone == "resnet18":
        assert trains == {"layer3", "layer4"} and {"conv1", "layer1", "layer2"} <= frozen
    else:
        assert trains and frozen and max(map(int, frozen)) < min(map(int, trains))
    assert all(p.requires_grad for p in model.backbone.fpn.parameters())
    with pytest.raises(ValueError, match="trainable_backbone_layers must be in 0..5"):
        build("maskrcnn", pretrained=True, trainable_backbone_layers=7)


# ---------------------------------------------------------------- detectors


def test_backbone_variants_match_torchvision_and_train():
    """resnet50 / resnet50_v2 keep torchvision's module names and shapes; MobileNetV3 FPN trains."""
    for backbone, reference in (("resnet50", torchvision.models.detection.maskrcnn_resnet50_fpn),
                                ("resnet50_v2", torchvision.models.detection.maskrcnn_resnet50_fpn_v2)):
        ours = models.build_model(models.default_config("maskrcnn", backbone=backbone)).state_dict()
        theirs = reference(weights=None, weights_backbone=None, num_classes=47).state_dict()
        assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    model = build("maskrcnn", backbone="mobilenet_v3", anchor_sizes=None).train()
    assert list(model.backbone(torch.zeros(1, 3, 64, 64))) == ["0", "1", "pool"]
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.backbone.modules())
    assert not any(isinstance(m, torchvision.ops.FrozenBatchNorm2d) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())  # from scratch: every layer trains
    losses = model(*batch())
    assert set(losses) >= {"loss_mask", "loss_classifier"} and all(torch.isfinite(v) for v in losses.values())


def roi_heads_losses(model, images, targets, proposals, seed=0):
    """The RoI heads' training losses for fixed backbone features and given proposals (one tensor per image)."""
    model.train()
    with torch.no_grad():
        image_list, targets_t = model.transform(images, targets)
        features = model.backbone(image_list.tensors)
    torch.manual_seed(seed)
    _, losses = model.roi_heads(features, proposals, image_list.image_sizes, targets_t)
    return losses


def test_deepmac_mask_loss_follows_gt_boxes_not_proposals():
    images, targets = batch()
    # The transform keeps the first image at 96x128 (scale 1), so these boxes are in network pixels.
    near = [torch.tensor([[22.0, 12, 62, 42], [18, 8, 58, 38], [32, 52, 98, 88]]), torch.tensor([[5.0, 5, 40, 40]])]
    far = [torch.tensor([[100.0, 60, 126, 94], [0, 70, 15, 95]]), torch.tensor([[10.0, 60, 70, 120]])]
    dm = build("deepmac", gt_box_jitter=0.0)
    a = roi_heads_losses(dm, images, targets, near)["loss_mask"]
    b = roi_heads_losses(dm, images, targets, far)["loss_mask"]
    assert a.item() > 0 and a.item() == b.item()
    mr = build("maskrcnn")
    a = roi_heads_losses(mr, images, targets, near)["loss_mask"]
    b = roi_heads_losses(mr, images, targets, far)["loss_mask"]
    assert a.item() > 0 and b.item() > 0 and abs(a.item() - b.item()) > 1e-4


def test_deepmac_jitter_and_instance_cap():
    images, targets = batch(categories=(0, 1, 2))
    dm = build("deepmac", mask_max_instances=2)
    seen = []
    dm.roi_heads.mask_head.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0]))
    props = [torch.tensor([[0.0, 0, 50, 50]]), torch.tensor([[0.0, 0, 50, 50]])]
    a = roi_heads_losses(dm, images, targets, props, seed=0)["loss_mask"]
    b = roi_heads_losses(dm, images, targets, props, seed=1)["loss_mask"]
    assert seen == [2, 2]  # 3 GT instances, capped at 2; the empty image adds none
    assert a.item() != b.item()  # jittered boxes (default 0.05) differ between seeds

    boxes = torch.tensor([[10.0, 20, 50, 40], [0, 0, 8, 8]])
    assert torch.equal(deepmac.jitter_boxes(boxes, 0.0, (64, 64)), boxes)
    torch.manual_seed(0)
    for _ in range(20):
        j = deepmac.jitter_boxes(boxes, 0.1, (64, 64))
        wh = torch.tensor([[40.0, 20, 40, 20], [8, 8, 8, 8]])
        assert ((j - boxes).abs() <= 0.1 * wh + 1e-5).all()
        assert (j[:, 2:] > j[:, :2]).all() and j.min() >= 0 and j.max() <= 64


def test_deepmac_class_specific_masks():
    dm = build("deepmac", class_agnostic_masks=False)
    assert dm.roi_heads.mask_predictor.out_channels == 47
    assert build("deepmac").roi_heads.mask_predictor.out_channels == 1
    losses = dm.train()(*batch())
    assert losses["loss_mask"].item() > 0
    dm.eval()
    with torch.no_grad():
        out = dm(batch()[0])
    assert out[0]["masks"].shape[1:] == (1, 96, 128)


@pytest.mark.parametrize("arch", ["maskrcnn", "deepmac"])
def test_mask_categories_restrict_only_the_mask_loss(arch):
    assert common.mask_label_table(4, None).tolist() == [False, True, True, True]
    assert common.mask_label_table(4, [2]).tolist() == [False, False, False, True]
    model = build(arch, mask_categories=[0])
    assert model.roi_heads.mask_label_allowed.nonzero().flatten().tolist() == [1]
    assert "roi_heads.mask_label_allowed" not in model.state_dict()
    images, targets = batch(categories=(5, 30))  # no category 0
    torch.manual_seed(0)
    losses = model.train()(images, targets)
    assert losses["loss_mask"].item() == 0 and losses["loss_mask"].requires_grad
    assert losses["loss_box_reg"].item() > 0 and losses["loss_classifier"].item() > 0
    images, targets = batch(categories=(0, 30))
    torch.manual_seed(0)
    assert model(images, targets)["loss_mask"].item() > 0


# ---------------------------------------------------------------- attribute head (attr_head)


def with_attributes(targets, attrs_per_instance):
    """``targets`` plus ``attributes (N, 92)`` multi-hot, from one attribute-id list per instance (image 0)."""
    out = []
    for k, t in enumerate(targets):
        a = torch.zeros(len(t["labels"]), 92)
        for i, ids in enumerate(attrs_per_instance if k == 0 else []):
            a[i, list(ids)] = 1
        out.append(dict(t, attributes=a))
    return out


DET = ("maskrcnn", "deepmac")


@pytest.mark.parametrize("arch", DET)
def test_attr_head_trains_and_gradients_reach_it(arch):
    model = build(arch, attr_head=True).train()
    assert isinstance(model.roi_heads.attr_predictor, maskrcnn.AttributePredictor)
    assert model.roi_heads.attr_predictor[-1].out_features == 92
    assert model.roi_heads.attr_predictor[0].in_features == model.roi_heads.box_predictor.cls_score.in_features
    images, targets = batch(categories=(0, 30))  # 0 (shirt) carries attributes, 30 (pocket) does not
    losses = model(images, with_attributes(targets, [(1, 5, 20), ()]))
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg",
                           "loss_attr"}
    assert losses["loss_attr"].ndim == 0 and torch.isfinite(losses["loss_attr"]) and losses["loss_attr"].item() > 0
    sum(losses.values()).backward()
    head = [p.grad for p in model.roi_heads.attr_predictor.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in head) and all(g.abs().sum() > 0 for g in head)
    # the attribute loss also trains the shared box head
    model.zero_grad()
    model(images, with_attributes(targets, [(1, 5, 20), ()]))["loss_attr"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.roi_heads.box_head.parameters())
    # uint8 multi-hot works too
    t8 = [dict(t, attributes=t["attributes"].to(torch.uint8)) for t in with_attributes(targets, [(1,), ()])]
    assert torch.isfinite(model(images, t8)["loss_attr"])


@pytest.mark.parametrize("arch", DET)
def test_attr_head_eval_scores_are_aligned_with_detections(arch):
    model = build(arch, attr_head=True, box_score_thresh=0.0).eval()
    images, _ = batch()
    with torch.no_grad():
        out = model(images)
        # at 96x128 and 128x80 the transform keeps scale 1, so output boxes are network boxes
        image_list, _ = model.transform(images)
        features = model.backbone(image_list.tensors)
        direct = torch.sigmoid(model.roi_heads.attr_logits(features, [r["boxes"] for r in out],
                                                           image_list.image_sizes))
    assert image_list.image_sizes == [(96, 128), (128, 80)]
    rows = 0
    for r in out:
        n = len(r["scores"])
        assert n > 0
        a = r["attr_scores"]
        assert a.shape == (n, 92) and a.dtype == torch.float32
        assert a.min() >= 0 and a.max() <= 1
        torch.testing.assert_close(a, direct[rows:rows + n])  # row i belongs to detection i
        rows += n
    # no detections: an empty (0, 92) block
    model.roi_heads.score_thresh = 1.1
    with torch.no_grad():
        empty = model(images[:1])[0]
    assert empty["attr_scores"].shape == (0, 92) and empty["masks"].shape[0] == 0


@pytest.mark.parametrize("arch", DET)
def test_attr_head_off_leaves_model_state_and_outputs_unchanged(arch):
    off, on = build(arch, seed=0), build(arch, seed=0, attr_head=True)
    assert not hasattr(off.roi_heads, "attr_label_allowed") and off.roi_heads.attr_predictor is None
    keys_off, keys_on = set(off.state_dict()), set(on.state_dict())
    assert not any("attr" in k for k in keys_off)
    assert keys_on - keys_off == {f"roi_heads.attr_predictor.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")}
    assert keys_off <= keys_on
    assert "roi_heads.attr_label_allowed" not in keys_on  # derived from the config, not saved
    # the head is built last: every other weight is the same for a seed, and so are the detections
    for k, v in off.state_dict().items():
        assert torch.equal(v, on.state_dict()[k]), k
    images, targets = batch()
    off.eval(), on.eval()
    with torch.no_grad():
        a, b = off(images), on(images)
    for ra, rb in zip(a, b):
        assert set(rb) - set(ra) == {"attr_scores"} and "attr_scores" not in ra
        for key in ra:
            torch.testing.assert_close(ra[key], rb[key])
    # the head off ignores target attributes; a config saved before the attr_* keys existed still loads
    losses = off.train()(images, with_attributes(targets, [(1,), ()]))
    assert "loss_attr" not in losses
    old_config = {k: v for k, v in tiny_config(arch).items() if not k.startswith("attr_") and k != "num_attributes"}
    models.build_model(old_config).load_state_dict(off.state_dict())  # strict


@pytest.mark.parametrize("arch", DET)
def test_attr_loss_uses_only_attribute_categories(arch):
    from lib.labels import ATTRIBUTE_CATEGORIES

    assert 0 in ATTRIBUTE_CATEGORIES and 30 not in ATTRIBUTE_CATEGORIES and 40 not in ATTRIBUTE_CATEGORIES
    model = build(arch, attr_head=True)
    allowed = model.roi_heads.attr_label_allowed
    assert allowed.nonzero().flatten().tolist() == [c + 1 for c in ATTRIBUTE_CATEGORIES]
    images, targets = batch(categories=(0, 30))
    props = [torch.tensor([[20.0, 10, 60, 40], [22, 12, 61, 41], [30, 50, 100, 90], [31, 51, 99, 88]]),
             torch.tensor([[5.0, 5, 40, 40]])]

    def loss(attrs, weight=None, **kw):
        if weight is not None:
            model.roi_heads.attr_loss_weight = weight
        return roi_heads_losses(model, images, with_attributes(targets, attrs), props, **kw)["loss_attr"]

    base = loss([(1, 2), ()])
    assert base.item() > 0
    # the pocket's (category 30) attributes never matter; the shirt's do
    assert loss([(1, 2), (3, 4, 5, 6)]).item() == base.item()
    assert loss([(7,), ()]).item() != base.item()
    # only non-attribute categories: an exact zero that is still in the graph
    _, pockets = batch(categories=(30, 40))
    out = roi_heads_losses(model, images, with_attributes(pockets, [(1,), (2,)]), props)["loss_attr"]
    assert out.item() == 0 and out.requires_grad
    # the weight scales the loss
    assert loss([(1, 2), ()], weight=2.0).item() == pytest.approx(2 * base.item(), rel=1e-6)
    assert loss([(1, 2), ()], weight=0.0).item() == 0


def test_attribute_prior_starts_at_the_per_category_frequencies():
    """init_prior: per-label frequencies shrunk by one pseudo-instance towards the attribute's overall frequency;
    with the last layer at zero the untrained head predicts exactly that, whatever the features."""
    head = maskrcnn.AttributePredictor(8, 3, hidden=4, num_classes=3)
    counts = torch.tensor([[0, 0, 0], [3, 1, 0], [1, 0, 1]])
    totals = torch.tensor([0, 4, 1])
    head.init_prior(counts, totals)
    overall = torch.tensor([4.0, 1.0, 1.0]) / 5
    want = torch.stack([overall, (counts[1] + overall) / 5, (counts[2] + overall) / 2])
    labels = torch.tensor([0, 1, 2, 1])
    got = torch.sigmoid(head(torch.randn(4, 8), labels))
    torch.testing.assert_close(got, want[labels].float(), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="needs each RoI's label"):
        head(torch.randn(2, 8))
    plain = maskrcnn.AttributePredictor(8, 3, hidden=4)  # without a prior: a plain MLP, labels ignored
    assert plain.category_logits is None and plain[-1].weight.abs().sum() > 0
    torch.testing.assert_close(plain(torch.ones(1, 8)), plain(torch.ones(1, 8), torch.tensor([2])))


@pytest.mark.parametrize("arch", DET)
def test_attribute_prior_in_the_model_trains_and_follows_each_detection_label(arch):
    model = build(arch, attr_head=True, attr_prior=True, box_score_thresh=0.0)
    head = model.roi_heads.attr_predictor
    assert head.category_logits.shape == (model.roi_heads.box_predictor.cls_score.out_features, 92)
    assert "roi_heads.attr_predictor.category_logits" in model.state_dict()
    counts, totals = torch.zeros(head.category_logits.shape, dtype=torch.long), torch.zeros(len(head.category_logits))
    counts[1, 5], totals[1] = 9, 10  # label 1 (shirt): attribute 5 on 9 of 10
    head.init_prior(counts, totals)
    model.eval()
    images, targets = batch()
    with torch.no_grad():
        out = model(images)
    for r in out:  # untrained: each detection gets its label's prior, whatever its features
        torch.testing.assert_close(r["attr_scores"], torch.sigmoid(head.category_logits[r["labels"]]))
    boxes = [t["boxes"] for t in targets]
    at = maskrcnn.attributes_for_boxes(model, images, boxes, [torch.ones(len(b), dtype=torch.long) for b in boxes])
    assert at[0][:, 5].tolist() == pytest.approx([(9 + 0.9) / 11] * len(boxes[0]), abs=1e-6)
    with pytest.raises(ValueError, match="needs each RoI's label"):
        maskrcnn.attributes_for_boxes(model, images, boxes)
    model.train()
    losses = model(images, with_attributes(targets, [(1, 5), ()]))
    losses["loss_attr"].backward()
    assert head.category_logits.grad is not None and head.category_logits.grad.abs().sum() > 0
    assert head[-1].weight.grad.abs().sum() > 0  # the features' part learns from its zero start


def test_attr_head_config_and_targets_are_checked():
    cfg = models.default_config("maskrcnn")
    assert (cfg["attr_head"], cfg["num_attributes"], cfg["attr_loss_weight"]) == (False, 92, 1.0)
    assert models.default_config("deepmac")["attr_head"] is False
    model = build("maskrcnn", attr_head=True, attr_hidden=0, num_attributes=5)
    head = model.roi_heads.attr_predictor
    assert len(head) == 1 and isinstance(head[0], torch.nn.Linear) and head[0].out_features == 5
    images, targets = batch()
    model.train()
    with pytest.raises(ValueError, match=r"attr_head needs targets\[0\]\['attributes'\]"):
        model(images, targets)
    with pytest.raises(ValueError, match=r"shape \(2, 5\)"):
        model(images, with_attributes(targets, [(1,), ()]))  # 92 wide, the model has 5
    for bad in (dict(attr_hidden=-1), dict(num_attributes=0), dict(attr_loss_weight=-1.0),
                dict(attr_loss_weight=float("nan")), dict(attr_head="yes"), dict(attr_prior="yes")):
        with pytest.raises(ValueError, match="attr"):
            models.build_model(tiny_config("maskrcnn", **{"attr_head": True, **bad}))


@pytest.mark.slow
def test_attr_head_learns_synthetic_attributes(prepared_set):
    """A few steps on the synthetic 01 cache lower loss_attr on the same batch."""
    from lib.training_data import PreparedDataset, build_transforms

    ds = PreparedDataset(prepared_set, "train", build_transforms(False))
    items = [ds[i] for i in range(len(ds))]
    items = [it for it in items if it[1]["attributes"].sum() > 0][:2]
    assert len(items) == 2
    images = [im.as_subclass(torch.Tensor) for im, _ in items]
    targets = [{k: t[k].as_subclass(torch.Tensor) for k in ("boxes", "labels", "masks", "attributes")}
               for _, t in items]
    model = build("maskrcnn", attr_head=True, min_size=160, max_size=160).train()
    opt = torch.optim.Adam(model.roi_heads.attr_predictor.parameters(), lr=1e-3)

    def attr_loss():
        torch.manual_seed(0)  # the same proposals and samples each time
        return model(images, targets)["loss_attr"]

    with torch.no_grad():
        before = attr_loss().item()
    for _ in range(15):
        opt.zero_grad()
        attr_loss().backward()
        opt.step()
    with torch.no_grad():
        after = attr_loss().item()
    assert after < 0.5 * before


# ---------------------------------------------------------------- UNet


def test_semantic_target_paints_parts_over_garments_and_small_over_large():
    masks = torch.zeros(4, 4, 6, dtype=torch.uint8)
    masks[0, :, :4] = 1  # category 31 (sleeve, a part), 4x4
    masks[1] = 1  # category 0 (garment), the whole image
    masks[2, 1:3, 1:3] = 1  # category 33 (part), 2x2 inside the sleeve: smaller part on top
    masks[3, 2:, 3:] = 1  # category 4 (garment), smaller than the shirt: on top of it, under the sleeve
    labels = torch.tensor([31, 0, 33, 4]) + 1
    expected = torch.tensor([
        [32, 32, 32, 32, 1, 1],
        [32, 34, 34, 32, 1, 1],
        [32, 34, 34, 32, 5, 5],
        [32, 32, 32, 32, 5, 5],
    ])
    assert torch.equal(unet.semantic_target(masks, labels), expected)
    # Only garments supervised: the parts' pixels become the garments'; the rest is unchanged.
    only_garments = unet.semantic_target(masks, labels, mask_categories=[0, 4])
    assert torch.equal(only_garments, torch.tensor([[1] * 6, [1] * 6, [1, 1, 1, 5, 5, 5], [1, 1, 1, 5, 5, 5]]))
    # An unsupervised instance nobody covers is ignored, not background.
    ign = unet.semantic_target(masks[2:3], labels[2:3], mask_categories=[0])
    assert (ign == unet.IGNORE_INDEX).sum() == 4 and (ign == 0).sum() == 20
    empty = unet.semantic_target(torch.zeros(0, 3, 5, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64))
    assert empty.shape == (3, 5) and empty.dtype == torch.int64 and (empty == 0).all()


def _painted_in_order(masks, labels, mask_categories=None):
    """semantic_target's rule, painted one instance at a time on the host (the reference)."""
    out = torch.zeros(masks.shape[-2:], dtype=torch.int64)
    m, cats = masks.bool(), (labels - 1).tolist()
    areas = m.flatten(1).sum(1).tolist()
    parts = set(range(27, 46))
    order = sorted(range(len(cats)), key=lambda i: (cats[i] in parts, -areas[i], i))
    supervised = [mask_categories is None or c in mask_categories for c in cats]
    for i in order:
        if not supervised[i]:
            out[m[i]] = unet.IGNORE_INDEX
    for i in order:
        if supervised[i]:
            out[m[i]] = cats[i] + 1
    return out


def test_semantic_target_equals_painting_in_order():
    """The tensor-only target (no host sync) paints what one instance after the other would, ties included."""
    g = torch.Generator().manual_seed(0)
    for t in range(60):
        n = int(torch.randint(0, 40, (1,), generator=g))  # more than one chunk of 16 instances
        masks = (torch.rand(n, 7, 9, generator=g) < torch.rand(n, 1, 1, generator=g)).to(torch.uint8)
        if n > 3:
            masks[1] = masks[0]  # an area tie
        labels = torch.randint(1, 47, (n,), generator=g)
        mc = None if t % 2 else torch.randint(0, 46, (10,), generator=g).tolist()
        assert torch.equal(unet.semantic_target(masks, labels, mc), _painted_in_order(masks, labels, mc)), t


def test_without_semantic_drops_the_semantic_output():
    model = build("unet").eval()
    images, _ = batch()
    with torch.no_grad():
        with unet.without_semantic(model):
            plain = model(images[:1])[0]
        again = model(images[:1])[0]
        with unet.without_semantic(torch.nn.Linear(2, 2)):  # other models: a no-op
            pass
    assert "semantic" not in plain and again["semantic"].shape[0] == 47 and model.return_semantic
    for key in ("boxes", "labels", "scores", "masks"):
        torch.testing.assert_close(plain[key], again[key])


def test_instances_from_probs_splits_components():
    probs = torch.zeros(3, 8, 10)
    probs[0] = 0.9
    probs[1] = 0.1
    probs[1, 1:3, 1:4] = 0.8  # blob A of class 1 (6 px)
    probs[1, 5:7, 6:10] = 0.6  # blob B of class 1 (8 px)
    probs[1, 7, 0] = 0.7  # a 1 px speck of class 1
    probs[2, 0, 9] = 0.95  # 1 px of class 2
    probs[0] = 1 - probs[1] - probs[2]
    r = unet.instances_from_probs(probs, min_area=2, max_instances=10, region_masks=False)
    assert r["labels"].tolist() == [1, 1]
    torch.testing.assert_close(r["scores"], torch.tensor([0.8, 0.6]))
    assert r["boxes"].tolist() == [[1, 1, 4, 3], [6, 5, 10, 7]]
    assert r["masks"].shape == (2, 1, 8, 10)
    expected_a = torch.zeros(8, 10)
    expected_a[1:3, 1:4] = 0.8
    torch.testing.assert_close(r["masks"][0, 0], expected_a)
    assert r["masks"][1, 0].sum().item() == pytest.approx(8 * 0.6)
    # min_area 1 keeps the specks, max_instances keeps the best scores
    r = unet.instances_from_probs(probs, min_area=1, max_instances=3)
    assert r["labels"].tolist() == [2, 1, 1] and r["scores"][0].item() == pytest.approx(0.95)
    # 8-connectivity: diagonal neighbours of one class are one instance
    diag = torch.stack([torch.ones(4, 4), torch.zeros(4, 4)])
    diag[:, [0, 1], [0, 1]] = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    r = unet.instances_from_probs(diag, min_area=1, max_instances=5)
    assert r["labels"].tolist() == [1] and r["boxes"].tolist() == [[0, 0, 2, 2]]
    none = unet.instances_from_probs(torch.stack([torch.ones(4, 4), torch.zeros(4, 4)]), 1, 5)
    assert none["boxes"].shape == (0, 4) and none["masks"].shape == (0, 1, 4, 4) and none["labels"].dtype == torch.int64


def test_region_masks_are_the_regions_themselves():
    """region_masks: 1 inside each region, so a class that wins a pixel with a probability under a detector's
    mask threshold (47-way softmax early in training) keeps its whole region; scores and boxes are unchanged."""
    probs = torch.full((3, 6, 6), 0.3)
    probs[1, 1:4, 1:4] = 0.4  # class 1 wins this 3x3 block with 0.4 (under 06's mask threshold 0.45)
    probs[0, 1:4, 1:4] = 0.3
    probs[2, 1:4, 1:4] = 0.3
    probs[0, :, :] = torch.where(probs[1] == 0.4, probs[0], torch.tensor(0.4))
    soft = unet.instances_from_probs(probs, min_area=1, max_instances=5, region_masks=False)
    hard = unet.instances_from_probs(probs, min_area=1, max_instances=5)  # the default
    assert soft["labels"].tolist() == hard["labels"].tolist() == [1]
    torch.testing.assert_close(soft["scores"], hard["scores"])
    assert soft["boxes"].tolist() == hard["boxes"].tolist() == [[1, 1, 4, 4]]
    assert (soft["masks"][0, 0] >= 0.45).sum() == 0  # the soft mask binarises to nothing at 0.45
    expected = torch.zeros(6, 6)
    expected[1:4, 1:4] = 1.0
    torch.testing.assert_close(hard["masks"][0, 0], expected)
    assert models.default_config("unet")["region_masks"] is True
    model = build("unet", region_masks=False).eval()  # the config key reaches the model's instances
    with torch.no_grad():
        out = model([torch.rand(3, 64, 64)])[0]
    assert len(out["masks"]) > 0 and len(out["masks"].unique()) > 2  # the class probabilities
    model = build("unet", region_masks=True).eval()
    with torch.no_grad():
        out = model([torch.rand(3, 64, 64)])[0]
    assert len(out["masks"]) > 0 and set(out["masks"].unique().tolist()) == {0.0, 1.0}


def test_soft_dice_loss_known_values():
    target = torch.tensor([[[0, 1], [0, unet.IGNORE_INDEX]]])
    # Equal logits: p = 1/2 everywhere. Class 1: intersection 1/2, sum p over 3 valid pixels 3/2, 1 true pixel.
    loss = unet.soft_dice_loss(torch.zeros(1, 2, 2, 2), target)
    assert loss.item() == pytest.approx(1 - 2 * 0.5 / (1.5 + 1))
    perfect = torch.nn.functional.one_hot(torch.tensor([[[0, 1], [0, 0]]]), 2).permute(0, 3, 1, 2) * 50.0
    assert unet.soft_dice_loss(perfect, target).item() == pytest.approx(0, abs=1e-6)
    only_bg = unet.soft_dice_loss(torch.randn(1, 2, 2, 2, requires_grad=True), torch.zeros(1, 2, 2, dtype=torch.long))
    assert only_bg.item() == 0 and only_bg.requires_grad


def test_unet_resizes_like_the_detectors_and_ignores_padding():
    model = build("unet", min_size=64, max_size=64)
    images, targets = batch()
    image_list, _ = model.transform(images)
    assert image_list.image_sizes == [(48, 64), (64, 40)]  # long side = max_size, aspect kept
    assert image_list.tensors.shape[-2:] == (64, 64)  # padded to a multiple of 32
    # An image fully covered by an unsupervised instance has no supervised pixel: finite, zero losses.
    m = build("unet", mask_categories=[1]).train()
    full = dict(boxes=torch.tensor([[0.0, 0, 128, 96]]), labels=torch.tensor([1]),
                masks=torch.ones(1, 96, 128, dtype=torch.uint8))
    losses = m(images[:1], [full])
    assert losses["loss_ce"].item() == 0 and losses["loss_dice"].item() == 0
    assert np.isfinite(sum(losses.values()).item())


# ---------------------------------------------------------------- heads at given boxes (masks_for_boxes)


HEADS = [("maskrcnn", {}), ("maskrcnn", {"class_agnostic_masks": True}), ("deepmac", {})]


def scaled_images():
    """Images the 160 px transform resizes (up and down), so boxes must be mapped into its frame and back."""
    torch.manual_seed(2)
    return [torch.rand(3, 96, 128), torch.rand(3, 200, 150)]


@pytest.mark.parametrize("arch,extra", HEADS)
def test_masks_for_boxes_reproduce_the_models_masks_at_its_detections(arch, extra):
    model = build(arch, min_size=160, max_size=160, box_score_thresh=0.0, **extra).eval()
    images = scaled_images()
    with torch.no_grad():
        out = model(images)
    assert [tuple(s) for s in model.transform(images)[0].image_sizes] == [(120, 160), (160, 120)]
    masks = maskrcnn.masks_for_boxes(model, images, [r["boxes"] for r in out], [r["labels"] for r in out])
    for img, r, m in zip(images, out, masks):
        n = len(r["boxes"])
        assert n > 0 and m.shape == (n, *img.shape[-2:]) and m.dtype == torch.float32
        assert m.min() >= 0 and m.max() <= 1
        torch.testing.assert_close(m, r["masks"][:, 0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch,extra", HEADS)
def test_masks_for_boxes_paste_inside_each_box(arch, extra):
    model = build(arch, min_size=160, max_size=160, **extra)
    images = scaled_images()
    boxes = [torch.tensor([[0.0, 0.0, 128.0, 96.0], [20.0, 30.0, 60.0, 50.0]]), torch.zeros(0, 4)]
    labels = [torch.tensor([3, 31]), torch.zeros(0, dtype=torch.int64)]
    whole, small = maskrcnn.masks_for_boxes(model, images, boxes, labels)[0]
    m1 = maskrcnn.masks_for_boxes(model, images[1:], boxes[1:], labels[1:])[0]
    assert m1.shape == (0, 200, 150)
    assert whole.shape == small.shape == (96, 128)
    assert (whole > 0).float().mean() > 0.9  # the whole-image box covers the image
    # the small box: nonzero only inside it, up to the one-cell margin torchvision's paste adds
    # (a box side / mask size, plus a pixel of interpolation)
    m = {"maskrcnn": 28, "deepmac": 16}[arch]  # predicted mask side: 2 x 14 (Mask R-CNN), the crop (TINY DeepMAC)
    ys, xs = torch.nonzero(small > 0, as_tuple=True)
    assert ys.numel() > 0
    assert xs.min() >= 20 - 40 / m - 1 and xs.max() <= 60 + 40 / m
    assert ys.min() >= 30 - 20 / m - 1 and ys.max() <= 50 + 20 / m
    # far from the box: exactly zero
    assert small[:20, :].abs().sum() == 0 and small[:, 70:].abs().sum() == 0


def test_masks_for_boxes_channels_and_bad_input():
    per_class = build("maskrcnn")
    agnostic = build("maskrcnn", class_agnostic_masks=True)
    assert per_class.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 47
    assert agnostic.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 1
    images = scaled_images()[:1]
    box = [torch.tensor([[10.0, 10.0, 70.0, 80.0]])]
    with pytest.raises(ValueError, match="per-class masks: pass labels"):
        maskrcnn.masks_for_boxes(per_class, images, box)
    # per-class: the label picks the channel; class-agnostic: the label does not matter
    a = maskrcnn.masks_for_boxes(per_class, images, box, [torch.tensor([1])])[0]
    b = maskrcnn.masks_for_boxes(per_class, images, box, [torch.tensor([40])])[0]
    assert not torch.allclose(a, b)
    c = maskrcnn.masks_for_boxes(agnostic, images, box, [torch.tensor([1])])[0]
    torch.testing.assert_close(c, maskrcnn.masks_for_boxes(agnostic, images, box, [torch.tensor([40])])[0])
    torch.testing.assert_close(c, maskrcnn.masks_for_boxes(agnostic, images, box)[0])
    with pytest.raises(ValueError, match="2 box tensors"):
        maskrcnn.masks_for_boxes(agnostic, images, box * 2)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        maskrcnn.masks_for_boxes(agnostic, images, [torch.zeros(4)])
    with pytest.raises(TypeError, match="Mask R-CNN / DeepMAC"):
        maskrcnn.masks_for_boxes(build("unet"), images, box)


def test_class_agnostic_maskrcnn_config_trains_one_channel():
    assert models.default_config("maskrcnn")["class_agnostic_masks"] is False
    with pytest.raises(ValueError, match="class_agnostic_masks must be true or false"):
        build("maskrcnn", class_agnostic_masks="yes")
    model = build("maskrcnn", class_agnostic_masks=True).train()
    default = build("maskrcnn")
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes.pop("roi_heads.mask_predictor.mask_fcn_logits.weight") == (1, 256, 1, 1)
    assert shapes.pop("roi_heads.mask_predictor.mask_fcn_logits.bias") == (1,)
    ref = {k: v.shape for k, v in default.state_dict().items() if "mask_fcn_logits" not in k}
    assert shapes == ref
    # the one-channel logits layer starts as narrow as the per-class one (not torchvision's fan_out = 1 init)
    std = model.roi_heads.mask_predictor.mask_fcn_logits.weight.std().item()
    assert std == pytest.approx(default.roi_heads.mask_predictor.mask_fcn_logits.weight.std().item(), rel=0.2)
    images, targets = batch()
    losses = model(images, targets)
    assert 0 < losses["loss_mask"].item() < 3  # ~0.7-1.5 from a sane init; torchvision's 1-channel init gives ~9
    # mask_categories still decide which instances train the shared channel
    m = build("maskrcnn", class_agnostic_masks=True, mask_categories=[0]).train()
    images, targets = batch(categories=(5, 30))
    assert m(images, targets)["loss_mask"].item() == 0


@pytest.mark.parametrize("arch", DET)
def test_attributes_for_boxes_match_attr_scores_at_detections(arch):
    model = build(arch, attr_head=True, min_size=160, max_size=160, box_score_thresh=0.0).eval()
    images = scaled_images()
    with torch.no_grad():
        out = model(images)
    scores = maskrcnn.attributes_for_boxes(model, images, [r["boxes"] for r in out])
    for r, s in zip(out, scores):
        assert s.shape == (len(r["boxes"]), 92)
        torch.testing.assert_close(s, r["attr_scores"], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="no attribute head"):
        maskrcnn.attributes_for_boxes(build(arch), images, [r["boxes"] for r in out])


# ------------------------------------------------------------------ multi-scale training resize


@pytest.mark.parametrize("arch", ["maskrcnn", "deepmac", "unet"])
def test_train_scale_range_jitters_the_model_resize_in_training_only(arch):
    image = torch.rand(3, 150, 200)
    model = models.build_model(tiny_config(arch, min_size=96, max_size=128, train_scale_range=[0.5, 0.5]))
    model.train()
    assert model.transform([image])[0].image_sizes == [(48, 64)]  # exactly half the nominal 96 x 128
    model.eval()
    assert model.transform([image])[0].image_sizes == [(96, 128)]
    assert model.transform.min_size == (96,) and model.transform.max_size == 128  # restored after each image

    model = models.build_model(tiny_config(arch, min_size=96, max_size=128, train_scale_range=[0.5, 1.0]))
    model.train()

    def sizes(seed):
        torch.manual_seed(seed)
        return [model.transform([image])[0].image_sizes[0] for _ in range(8)]

    got = sizes(0)
    assert got == sizes(0) and len(set(got)) > 3  # random per image, repeatable with the seed
    assert all(48 <= h <= 96 and 64 <= w <= 128 for h, w in got)
    plain = models.build_model(tiny_config(arch, min_size=96, max_size=128)).train()
    assert plain.transform([image])[0].image_sizes == [(96, 128)]  # off by default


def test_train_scale_range_is_checked():
    for bad in ([0, 1], [1.2, 0.8], [1], "x"):
        with pytest.raises(ValueError, match="train_scale_range"):
            models.build_model(tiny_config("maskrcnn", train_scale_range=bad))


# ---------------------------------------------------------------- precision under autocast
def _on_bf16_grid(x: torch.Tensor) -> bool:
    return bool((x.bfloat16().float() == x).all())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("arch", ["maskrcnn", "deepmac"])
def test_boxes_stay_float32_under_autocast(arch, dtype):
    """bf16/fp16 autocast (as on a GPU): anchors, proposals and final boxes are float32, not on the bf16 grid
    (torchvision's BoxCoder would decode in the deltas' dtype), and masks are float32 probabilities."""
    model = build(arch, box_score_thresh=0.0, box_detections_per_img=50).eval()
    images = [torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(3))]
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        image_list, _ = model.transform(images)
        feats = model.backbone(image_list.tensors)
        assert next(iter(feats.values())).dtype == dtype  # the convolutions did run in low precision
        anchors = model.rpn.anchor_generator(image_list, list(feats.values()))
        proposals, _ = model.rpn(image_list, feats)
        out = model(images)[0]
    assert anchors[0].dtype == torch.float32 and proposals[0].dtype == torch.float32
    assert all(c.dtype == torch.float32 for c in model.rpn.anchor_generator.cell_anchors)
    boxes = out["boxes"]
    assert len(boxes) > 10 and boxes.dtype == torch.float32 and out["masks"].dtype == torch.float32
    assert not _on_bf16_grid(boxes) and not _on_bf16_grid(proposals[0])


def test_float32_box_decoding_leaves_the_float32_path_unchanged():
    """In float32 the float32 coder and anchors give exactly torchvision's stock results."""
    from torchvision.models.detection._utils import BoxCoder
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    images, _ = batch()
    model = build("maskrcnn", box_score_thresh=0.0).eval()
    with torch.no_grad():
        ours = model(images)
        for part in (model.rpn, model.roi_heads):
            part.box_coder = BoxCoder(part.box_coder.weights, part.box_coder.bbox_xform_clip)
        ag = model.rpn.anchor_generator
        stock = AnchorGenerator(ag.sizes, ag.aspect_ratios)
        model.rpn.anchor_generator = stock
        theirs = model(images)
    assert type(ag) is not AnchorGenerator
    for a, b in zip(ours, theirs):
        assert len(a["boxes"]) > 0
        for key in a:
            assert torch.equal(a[key], b[key]), key
    rel = torch.randn(50, 4) * 0.5
    ref = torch.rand(50, 4) * 500
    ref[:, 2:] += ref[:, :2] + 1
    assert torch.equal(maskrcnn.Float32BoxCoder((1.0,) * 4).decode_single(rel, ref),
                       BoxCoder((1.0,) * 4).decode_single(rel, ref))


# ---------------------------------------------------------------- DDP without find_unused_parameters
@pytest.mark.parametrize("case", ["no_mask_supervised_instance", "images_without_instances", "attr_head"])
@pytest.mark.parametrize("arch", ARCHS)
def test_every_trainable_parameter_gets_a_gradient(arch, case):
    """DDP's find_unused_parameters can stay off (lib/cli.py --ddp-find-unused): in the cases its help names,
    every trainable parameter still receives a gradient (zero losses stay connected to the graph)."""
    if case == "attr_head" and arch == "unet":
        pytest.skip("the UNet has no attribute head")
    overrides = {"attr_head": True} if case == "attr_head" else {}
    if case == "no_mask_supervised_instance":
        overrides["mask_categories"] = [5]  # the batch's instances are categories 0 and 30
    model = build(arch, **overrides).train()
    images, targets = batch()
    if case == "images_without_instances":
        images, targets = images[1:] * 2, targets[1:] * 2
    if case == "attr_head":
        for t in targets:
            t["attributes"] = torch.zeros(len(t["labels"]), 92)
    losses = model(images, targets)
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:10]


def test_configs_of_older_checkpoints_read_renamed_keys():
    """A config saved before ``mask_classes`` was named ``mask_categories`` builds the same model."""
    from lib.models import common

    old = dict(tiny_config("maskrcnn"), mask_classes=[0, 1])
    old.pop("mask_categories", None)
    assert models.default_config("maskrcnn", **{k: v for k, v in old.items() if k != "arch"})["mask_categories"] == [0, 1]
    assert common.complete_config({"arch": "x", "mask_categories": None}, {"mask_classes": [3]}) == {
        "arch": "x", "mask_categories": [3]}
    with pytest.raises(ValueError, match="unknown config keys"):
        common.complete_config({"arch": "x", "mask_categories": None}, {"mask_kinds": [3]})
