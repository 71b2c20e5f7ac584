"""Starting weights from files: ImageNet backbones, torchvision's COCO Mask R-CNN, our own checkpoints.

The training scripts name what a model starts from as torchvision's reference scripts do:

- ``--weights-backbone imagenet|PATH``: ImageNet weights for the detector's backbone (``backbone.body``) or
  the UNet's encoder (``net.encoder``). ``imagenet`` finds torchvision's published file by its name in the
  torch hub cache (``$TORCH_HOME/hub/checkpoints``), else downloads it, else fails with a message naming the
  file to attach (:data:`BACKBONE_FILES`); ``PATH`` is such a file on disk, with torchvision's keys
  (``conv1.weight``, ``layer1.0.bn1.running_mean``, ... or ``features.*`` for MobileNetV3; the
  classifier ``fc.*`` / ``classifier.*`` is unused). segmentation-models-pytorch's ResNet encoders take
  the same files.
- ``--weights coco|PATH``: the whole detector. ``coco`` is torchvision's COCO Mask R-CNN file for the
  ``resnet50`` / ``resnet50_v2`` backbones (:data:`COCO_FILES`), found like ``imagenet``; ``PATH`` is such a
  file (a torchvision detector state dict, or a reference-script checkpoint holding one under ``"model"``)
  or one of our training checkpoints of the same arch (fine-tuning: :func:`fine_tune_config` takes its
  model config, and a flag that changes the architecture is an error).

Rules of a load (:func:`load_weights`): every tensor of the file goes into the parameter or buffer of the
same name and shape. The class-count layers (:func:`is_class_count_key`: the box predictor, the per-class
mask logits, the UNet's segmentation head) load when their shapes fit and otherwise start fresh (COCO's 91
classes -> our 47). DeepMAC keeps its own hourglass mask head fresh (the file's mask head is unused), and an
attribute head, absent from every published file, starts fresh. Any other key whose shape differs, any file
key that fits no parameter, and any parameter of the loaded part that the file lacks is an error naming the
key (and both shapes); BatchNorm's ``num_batches_tracked`` counters are listed as missing, not an error
(torchvision's older files do not hold them). Old torchvision key names (``rpn.head.conv.weight``,
``mask_fcn1``) are upgraded by torchvision's own ``load_state_dict`` hooks.

What each model contributes (its class-count layers and new heads, where its backbone sits and which config
key names it, which config keys fix its architecture, whether COCO files fit it) is declared by its module and
read here through :data:`lib.models.ARCHS` (see :mod:`lib.models`); this module holds the rules and the files.

Pretrained backbones follow torchvision's convention: the model config's ``pretrained`` is set, so the
detector backbones use ``FrozenBatchNorm2d`` and only ``trainable_backbone_layers`` (default 3) train
(``lib.models.maskrcnn.build_backbone``); building a model never downloads anything.

Every load returns a report (:func:`load_weights`) that the engine prints (:func:`describe`) and records in
``meta.json`` and the checkpoint under ``"init"``.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch
from torchvision.models import (
    MobileNet_V3_Large_Weights,
    ResNet18_Weights,
    ResNet34_Weights,
    ResNet50_Weights,
    ResNet101_Weights,
    ResNet152_Weights,
)
from torchvision.models.detection import MaskRCNN_ResNet50_FPN_V2_Weights, MaskRCNN_ResNet50_FPN_Weights

from . import checkpoint as lcheckpoint
from . import models as lmodels

# torchvision's ImageNet files, by our backbone / smp encoder name (file name = last part of the URL).
BACKBONE_URLS = {
    "resnet18": ResNet18_Weights.IMAGENET1K_V1.url,
    "resnet34": ResNet34_Weights.IMAGENET1K_V1.url,
    "resnet50": ResNet50_Weights.IMAGENET1K_V1.url,
    "resnet50_v2": ResNet50_Weights.IMAGENET1K_V1.url,  # the detector variant; same ImageNet ResNet-50
    "resnet101": ResNet101_Weights.IMAGENET1K_V1.url,
    "resnet152": ResNet152_Weights.IMAGENET1K_V1.url,
    "mobilenet_v3": MobileNet_V3_Large_Weights.IMAGENET1K_V1.url,
}
# torchvision's COCO Mask R-CNN files, by detector backbone.
COCO_URLS = {
    "resnet50": MaskRCNN_ResNet50_FPN_Weights.COCO_V1.url,
    "resnet50_v2": MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1.url,
}
BACKBONE_FILES = {k: u.rsplit("/", 1)[1] for k, u in BACKBONE_URLS.items()}
COCO_FILES = {k: u.rsplit("/", 1)[1] for k, u in COCO_URLS.items()}

_UNUSED_BACKBONE_KEYS = ("fc.", "classifier.")  # ImageNet classifiers


def _declared(name: str, arch: str | None) -> tuple:
    """The key prefixes ``name`` (e.g. ``CLASS_COUNT_PREFIXES``) that ``arch``'s model module declares, or every
    model's together when ``arch`` is None."""
    modules = lmodels.ARCHS.values() if arch is None else [lmodels.ARCHS[arch]]
    return tuple(p for m in modules for p in getattr(m, name))


def is_class_count_key(key: str, arch: str | None = None) -> bool:
    """Whether a state-dict key belongs to a layer whose shape follows the number of classes (those of
    ``arch``'s model, or of any model when ``arch`` is None: each model module's ``CLASS_COUNT_PREFIXES``)."""
    return key.startswith(_declared("CLASS_COUNT_PREFIXES", arch))


# --------------------------------------------------------------------------------------------- finding files
def cached_or_downloaded(url: str, flag: str) -> Path:
    """torchvision's file at ``url``: from the torch hub cache, else downloaded into it.

    Raises RuntimeError naming the file and the flag to pass it by path when it is not cached and the
    download fails (no internet, e.g. a Kaggle kernel).
    """
    name = url.rsplit("/", 1)[1]
    path = Path(torch.hub.get_dir()) / "checkpoints" / name
    if path.is_file():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(path), progress=True)
    except Exception as e:  # URLError, OSError, ...: offline or blocked
        raise RuntimeError(
            f"{name} is not in the torch cache ({path.parent}) and could not be downloaded "
            f"({type(e).__name__}: {str(e)[:200]}); attach the file and pass its path: {flag} /path/to/{name}"
        ) from None
    return path


def _backbone_name(arch: str, config: dict) -> str:
    """The backbone of a detector config, or the encoder of a UNet config (the model's ``BACKBONE_CONFIG_KEY``)."""
    return config[lmodels.ARCHS[arch].BACKBONE_CONFIG_KEY]


def backbone_file(source: str, arch: str, config: dict) -> Path:
    """The ImageNet file for ``--weights-backbone SOURCE`` (``imagenet`` or a path) of ``config``'s backbone."""
    if source != "imagenet":
        return Path(source)
    name = _backbone_name(arch, config)
    if name not in BACKBONE_URLS:
        raise ValueError(f"--weights-backbone imagenet: no torchvision ImageNet file for {name!r} (known: "
                         f"{sorted(BACKBONE_URLS)}); pass the encoder's weights file as --weights-backbone PATH")
    return cached_or_downloaded(BACKBONE_URLS[name], "--weights-backbone")


def coco_file(config: dict) -> Path:
    """torchvision's COCO Mask R-CNN file for ``config['backbone']`` (``--weights coco``)."""
    backbone = config["backbone"]
    if backbone not in COCO_URLS:
        raise ValueError(f"--weights coco: torchvision publishes COCO Mask R-CNN weights for the backbones "
                         f"{sorted(COCO_URLS)}, not {backbone!r}; use --backbone resnet50 or resnet50_v2, or "
                         f"--weights-backbone for an ImageNet backbone")
    return cached_or_downloaded(COCO_URLS[backbone], "--weights")


# --------------------------------------------------------------------------------------------- reading files
def read_weights(path: str | Path) -> tuple[dict, dict | None]:
    """``(state dict, our training checkpoint or None)`` from a weights file (``weights_only=True``).

    Accepts a plain state dict (torchvision's published files), a dict holding one under ``"model"``
    (torchvision's reference-script checkpoints) or one of our training checkpoints (digest checked).
    Raises FileNotFoundError / ValueError naming the file when it is missing, truncated or foreign.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, not a torch file, a pickle of non-tensor objects
        raise ValueError(f"{path}: not a readable weights file, truncated or not saved by torch.save "
                         f"({type(e).__name__}: {str(e)[:200]})") from None
    if isinstance(obj, dict) and isinstance(obj.get("config"), dict) and "model" in obj:
        ckpt = lcheckpoint.check_checkpoint(obj, path)  # checks the digest
        return ckpt["model"], ckpt
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        what = type(obj).__name__ if not isinstance(obj, dict) else f"a dict with keys {sorted(map(str, obj))[:6]}"
        raise ValueError(f"{path}: not a weights file (expected a state dict of tensors, got {what})")
    return {str(k): v for k, v in obj.items()}, None


# --------------------------------------------------------------------------------------------- configs
def fine_tune_config(saved: dict, config: dict, explicit: dict, path: str | Path) -> dict:
    """The model config of a run that starts from our checkpoint ``path`` (model config ``saved``).

    ``config``: this run's config from its flags; ``explicit``: the keys its flags set (plus
    ``num_classes``). Keys the flags do not set keep the checkpoint's values; an explicit value of an
    architecture key (the model module's ``ARCHITECTURE_KEYS``) that differs from the checkpoint's is a
    ValueError naming the key and both values. ``num_classes`` is this run's (the class-count layers start
    fresh if it differs).
    """
    arch = config["arch"]
    if saved.get("arch") != arch:
        raise ValueError(f"{path}: a checkpoint of arch {saved.get('arch')!r}; --weights needs a {arch!r} "
                         f"checkpoint (or torchvision's COCO file for the detectors)")
    out = dict(config, **{k: v for k, v in saved.items() if k in config})
    diffs = [f"{k}: {explicit[k]!r} here, {saved.get(k)!r} in the checkpoint"
             for k in lmodels.ARCHS[arch].ARCHITECTURE_KEYS if k in explicit and explicit[k] != saved.get(k)]
    if diffs:
        raise ValueError(f"{path}: this run's model differs from the checkpoint's beyond the class-count layers "
                         f"({'; '.join(diffs)}); drop those flags to fine-tune the checkpoint's model")
    out.update(explicit)
    return out


# --------------------------------------------------------------------------------------------- loading
def _group(keys) -> dict:
    """``{module prefix: count}`` of state-dict keys (the first two name parts), sorted by prefix."""
    return dict(sorted(Counter(".".join(k.split(".")[:2]) for k in keys).items()))


def load_weights(model: torch.nn.Module, state: dict, path: str | Path, *, arch: str | None = None, scope: str = "",
                 file_prefix: str = "", unused_prefixes: tuple = (), fresh_prefixes: tuple = ()) -> dict:
    """Load ``state`` (read from ``path``) into ``model`` by the rules of the module docstring.

    Args:
        arch: ``model``'s arch, whose module declares its class-count layers (``CLASS_COUNT_PREFIXES``) and
            heads in no published file (``NEW_HEAD_PREFIXES``); None: those of every model.
        scope: the part of the model the file fills (``""`` = all of it; ``"backbone.body."``: a backbone);
            parameters of the model outside it start fresh.
        file_prefix: the file's prefix for that part (``"features."`` for MobileNetV3): file keys
            ``file_prefix + k`` go to ``scope + k``; other file keys are unused when they start with
            ``unused_prefixes``, else an error.
        unused_prefixes: file keys (as in the file) that are read but deliberately not loaded.
        fresh_prefixes: model keys that start fresh even if the file has them (their file keys are unused).

    Returns the report: ``loaded`` ({module: count}), ``num_loaded``, ``fresh`` (model keys left at their
    initialisation inside the scope: class-count layers whose shape differs, ``fresh_prefixes``, the
    attribute head), ``missing`` (``num_batches_tracked`` counters the file lacks), ``unused`` (file keys
    not loaded). Raises ValueError naming the file and the key for anything else that does not fit.
    """
    own = model.state_dict()
    class_count, new_heads = _declared("CLASS_COUNT_PREFIXES", arch), _declared("NEW_HEAD_PREFIXES", arch)
    part = scope.rstrip(".") or "weights"  # for messages
    feed, unused, fresh, source_key = {}, [], [], {}
    for key, value in state.items():
        if key.startswith(unused_prefixes):
            unused.append(key)
            continue
        if not key.startswith(file_prefix):
            raise ValueError(f"{path}: key {key!r} fits no parameter of the model's {part} "
                             f"(expected keys starting with {file_prefix!r})")
        target = scope + key[len(file_prefix):]
        if target.startswith(fresh_prefixes):
            unused.append(key)
            continue
        if target in own and tuple(own[target].shape) != tuple(value.shape):
            if not target.startswith(class_count):
                raise ValueError(f"{path}: {key!r} has shape {tuple(value.shape)} in the file but "
                                 f"{tuple(own[target].shape)} in the model ({target})")
            fresh.append(target)
            unused.append(key)
            continue
        feed[target] = value
        source_key[target] = key
    try:
        result = model.load_state_dict(feed, strict=False)
    except RuntimeError as e:  # shape errors after torchvision's key upgrades
        raise ValueError(f"{path}: weights do not fit the model: {str(e)[:500]}") from None
    if result.unexpected_keys:
        bad = [source_key.get(k, k) for k in result.unexpected_keys]
        raise ValueError(f"{path}: {len(bad)} key(s) of the file fit no parameter of the model's {part}, "
                         f"e.g. {bad[:3]}")
    missing, not_loaded = [], set(result.missing_keys)
    for key in sorted(not_loaded):
        if not key.startswith(scope):
            continue
        if key.endswith("num_batches_tracked"):
            missing.append(key)
        elif key.startswith(fresh_prefixes + new_heads) or (key.startswith(class_count) and scope == ""):
            fresh.append(key)
        else:
            raise ValueError(f"{path}: the file has no {key!r} (shape {tuple(own[key].shape)}) for the model's "
                             f"{part}: not the weights of this architecture")
    loaded = [k for k in own if k.startswith(scope) and k not in not_loaded and k not in fresh]
    if not loaded:
        raise ValueError(f"{path}: no weight of the file fits the model")
    return {"file": str(path), "scope": scope.rstrip(".") or "model", "num_loaded": len(loaded), "loaded": _group(loaded),
            "fresh": sorted(set(fresh)), "missing": missing, "unused": sorted(unused)}


def plan_init(arch: str, config: dict, explicit: dict, weights: str | None, weights_backbone: str | None):
    """Resolve ``--weights`` / ``--weights-backbone`` before the model is built.

    Returns ``(config, plan)``: the run's model config (``pretrained`` set for ImageNet / COCO starts; a
    checkpoint of ours gives its architecture, see :func:`fine_tune_config`) and what :func:`apply_init`
    loads after the build (``None`` when neither flag is given). Files are found and read here, so a
    missing, truncated or foreign file fails before anything is trained.
    """
    if weights and weights_backbone:
        raise ValueError("--weights and --weights-backbone together: the --weights file holds the backbone too; "
                         "pass one of them")
    if weights_backbone:
        path = backbone_file(weights_backbone, arch, config)
        state, ckpt = read_weights(path)
        if ckpt is not None:
            raise ValueError(f"{path}: a training checkpoint of ours; pass it as --weights, not --weights-backbone")
        return dict(config, pretrained=True), {"kind": "backbone", "source": weights_backbone, "path": path,
                                               "state": state}
    if not weights:
        return config, None
    takes_coco = lmodels.ARCHS[arch].TAKES_COCO_FILES
    if weights == "coco":
        if not takes_coco:
            raise ValueError(f"--weights coco is torchvision's COCO Mask R-CNN, for 03/04; the {arch} model takes "
                             f"--weights-backbone imagenet|PATH or --weights with a {arch} checkpoint of ours")
        path = coco_file(config)
    else:
        path = Path(weights)
    state, ckpt = read_weights(path)
    if ckpt is not None:
        config = fine_tune_config(dict(ckpt["config"]), config, explicit, path)
        kind = "checkpoint"
    else:  # a torchvision detector file (COCO) or a bare state dict of our model (the UNet)
        kind = "coco" if takes_coco else "state_dict"
        if takes_coco:
            config = dict(config, pretrained=True)
    return config, {"kind": kind, "source": weights, "path": path, "state": state}


def apply_init(model: torch.nn.Module, arch: str, config: dict, plan: dict) -> dict:
    """Load what :func:`plan_init` planned into the freshly built ``model``; the report (JSON-safe)."""
    module = lmodels.ARCHS[arch]
    if plan["kind"] == "backbone":
        report = load_weights(model, plan["state"], plan["path"], arch=arch, scope=module.BACKBONE_SCOPE,
                              file_prefix=module.BACKBONE_FILE_PREFIXES.get(_backbone_name(arch, config), ""),
                              unused_prefixes=_UNUSED_BACKBONE_KEYS)
    else:
        fresh = module.OWN_HEAD_PREFIXES if plan["kind"] == "coco" else ()
        report = load_weights(model, plan["state"], plan["path"], arch=arch, fresh_prefixes=fresh)
    flag = "--weights-backbone" if plan["kind"] == "backbone" else "--weights"
    return {"flag": flag, "source": str(plan["source"]), "kind": plan["kind"], **report}


def describe(report: dict) -> str:
    """A few printable lines on what an :func:`apply_init` load did."""
    lines = [f"{report['flag']} {report['source']}: {report['num_loaded']} tensors loaded from {report['file']} into {report['scope']} "
             f"({', '.join(f'{k} {n}' for k, n in report['loaded'].items())})"]
    for name in ("fresh", "missing", "unused"):
        keys = report[name]
        if keys:
            more = f" ... (+{len(keys) - 6})" if len(keys) > 6 else ""
            lines.append(f"  {name} ({len(keys)}): {', '.join(keys[:6])}{more}")
    return "\n".join(lines)
