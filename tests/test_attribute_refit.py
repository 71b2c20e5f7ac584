"""lib/attribute_refit.py: the attribute head refit alone on frozen features, on rows and on a checkpoint."""
import numpy as np
import pytest
import torch

from lib import attribute_refit as lrefit
from lib import models as lmodels
from lib.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from lib.labels import ATTRIBUTE_CATEGORIES
from lib.models.maskrcnn import AttributePredictor


def test_refit_head_learns_what_the_features_say_and_leaves_the_head_alone():
    """On features that carry an attribute (feature 0 > 0 <=> attribute 1, never 0 or 2) the copy learns it; the
    head it was given is unchanged, and the same seed gives the same copy."""
    torch.manual_seed(0)
    head = AttributePredictor(4, 3, hidden=8, num_classes=2)
    before = {k: v.clone() for k, v in head.state_dict().items()}
    feats = torch.randn(256, 4)
    labels = torch.ones(256, dtype=torch.int64)
    attrs = torch.zeros(256, 3)
    attrs[:, 1] = (feats[:, 0] > 0).float()
    refit = lrefit.refit_head(head, feats, labels, attrs, steps=300, batch=64, lr=1e-2)
    with torch.no_grad():
        pred = torch.sigmoid(refit(feats, labels)) >= 0.5
    assert (pred[:, 1] == attrs[:, 1].bool()).float().mean() > 0.95 and not pred[:, [0, 2]].any()
    for k, v in head.state_dict().items():
        torch.testing.assert_close(v, before[k])
    again = lrefit.refit_head(head, feats, labels, attrs, steps=300, batch=64, lr=1e-2)
    for k, v in again.state_dict().items():
        torch.testing.assert_close(v, refit.state_dict()[k])


def _tiny_detector():
    torch.manual_seed(0)
    cfg = lmodels.default_config("maskrcnn", backbone="resnet18", min_size=64, max_size=64, attr_head=True,
                                 attr_prior=True, attr_hidden=16, box_detections_per_img=10)
    return cfg, lmodels.build_model(cfg).eval()


def _sample(cats):
    """One 64 px image with one box per category id of ``cats``; attribute 3 on every instance."""
    boxes = torch.tensor([[4.0 + 10 * i, 4.0, 24.0 + 10 * i, 40.0] for i in range(len(cats))])
    attrs = torch.zeros(len(cats), 92)
    attrs[:, 3] = 1
    return torch.rand(3, 64, 64), boxes, torch.tensor(cats) + 1, attrs


def test_attribute_rows_keep_the_attribute_categories_only():
    _, model = _tiny_detector()
    with_attrs, without = ATTRIBUTE_CATEGORIES[0], 46 - 1  # 45: a decoration, no attributes
    assert without not in ATTRIBUTE_CATEGORIES
    feats, labels, attrs = lrefit.attribute_rows(model, [_sample([with_attrs, without]), _sample([without])],
                                                 torch.device("cpu"))
    assert feats.shape == (1, model.roi_heads.box_head.fc7.out_features) and labels.tolist() == [with_attrs + 1]
    assert attrs.shape == (1, 92) and attrs[0, 3] == 1
    with pytest.raises(ValueError, match="no instance of an attribute category"):
        lrefit.attribute_rows(model, [_sample([without])], torch.device("cpu"))


def test_refit_checkpoint_changes_the_head_only_and_once(prepared_set, tmp_path, monkeypatch):
    cfg, model = _tiny_detector()
    path = tmp_path / "best.pth"
    ema = {"module." + k: v.clone() for k, v in model.state_dict().items()}
    ema["n_averaged"] = torch.tensor(3)
    save_checkpoint(path, {"format": "imat-train-checkpoint/2", "arch": "maskrcnn", "config": cfg,
                           "model": model.state_dict(), "model_ema": ema})
    info = lrefit.refit_checkpoint(path, prepared_set, steps=5, device=torch.device("cpu"))
    assert info["steps"] == 5 and info["rows"] > 0 and info["lr"] == lrefit.REFIT_DEFAULTS["lr"]
    after = read_checkpoint(path)
    assert after["attr_refit"] == info
    changed = {k for k, v in after["model"].items() if not torch.equal(v, model.state_dict()[k])}
    assert changed and all(k.startswith("roi_heads.attr_predictor.") for k in changed)
    for k in changed:  # the moving average (what 05 loads when the run kept one) gets the same head
        torch.testing.assert_close(after["model_ema"]["module." + k], after["model"][k])
    refit_model, _ = load_checkpoint(path)
    torch.testing.assert_close(refit_model.state_dict()["roi_heads.attr_predictor.2.weight"],
                               after["model"]["roi_heads.attr_predictor.2.weight"])
    monkeypatch.setattr(lrefit, "refit_head", lambda *a, **k: pytest.fail("refit twice"))
    assert lrefit.refit_checkpoint(path, prepared_set, steps=5, device=torch.device("cpu")) == info
    assert np.array_equal(read_checkpoint(path)["model"]["roi_heads.attr_predictor.2.weight"].numpy(),
                          after["model"]["roi_heads.attr_predictor.2.weight"].numpy())


def test_refit_steps_default_with_the_head_and_refuse_without_it():
    assert lrefit.refit_steps(None, attr_head=True) == lrefit.DEFAULT_STEPS == 400
    assert lrefit.refit_steps(None, attr_head=False) == 0 and lrefit.refit_steps(0, attr_head=False) == 0
    assert lrefit.refit_steps(7, attr_head=True) == 7 and lrefit.refit_steps(0, attr_head=True) == 0
    for bad, head in ((3, False), (-1, True)):
        with pytest.raises(ValueError, match="needs --attr-head"):
            lrefit.refit_steps(bad, attr_head=head)
