"""Training loop shared by ``02_train_unet.py``, ``03_train_maskrcnn.py`` and ``04_train_deepmac.py``.

``run_training(arch, model_overrides, args)`` trains a ``lib.models`` model on a 01 cache and writes to
``args.out_dir``:

* ``checkpoint.pth`` - rolling checkpoint (every epoch; also every ``--checkpoint-every-steps`` steps);
* ``best.pth``       - the checkpoint with the best validation Kaggle score so far;
* ``metrics.jsonl``  - ``{"kind": "train", ...}`` every ``--log-every`` steps (loss and its parts, lr,
  grad norm, step time, images/s) and ``{"kind": "epoch", ...}`` per epoch (means, ``val_*`` scores);
* ``curves.png``     - training curves (``lib.viz.plot_curves``), redrawn every epoch;
* ``val_scores.json`` - latest and best validation scores (Kaggle metric, COCO mask AP, per class);
* ``meta.json``      - stage, arch, model config, args, data summary, final metrics, checkpoint paths.

Checkpoints hold only plain Python types and tensors, so ``torch.load(path, weights_only=True)`` reads
them; :func:`load_checkpoint` rebuilds the model from the saved config alone. Keys: ``format``, ``stage``,
``arch``, ``config``, ``model``, ``optimizer``, ``scheduler``, ``scaler`` (None: bf16 needs no scaler),
``epoch`` (epochs completed), ``iter_in_epoch`` (steps done in epoch ``epoch``; 0 at epoch ends),
``global_step``, ``rng`` (torch / cuda / numpy states), ``rng_ranks`` (mid-epoch checkpoints of a DDP run:
every rank's states), ``epoch_sums`` (mid-epoch checkpoints: the epoch's loss sums so far), ``args``,
``labels`` (category names), ``best_score``, ``metrics`` (the last epoch record), ``world_size``, ``digest``
(SHA-256 of the rest, checked on load: a corrupted file is refused; required from format ``/2`` on, files
of format ``/1`` without it still load).

Determinism: every epoch reseeds torch/numpy/random from ``(seed, epoch, rank)`` and the sampler's order
depends only on ``(seed, epoch)``, so a run split by ``--stop-after-epoch`` + ``--resume`` gives the same
weights as an uninterrupted one (exactly on CPU with ``--workers 0``); a mid-epoch checkpoint restores each
rank's generators, so resuming from it is exact too.

Crashes: checkpoints, ``val_scores.json`` and ``meta.json`` are written atomically, a killed run's temporary
files are deleted at the next start, and a resume drops the ``metrics.jsonl`` records logged after its
checkpoint (they are logged again), so a killed-and-resumed run ends with the files of an uninterrupted one.

Multi-GPU: launched by ``torchrun`` (env ``WORLD_SIZE`` > 1) the model is wrapped in DDP (nccl on CUDA,
gloo on CPU), each rank reads its shard via ``DistributedSampler``, and rank 0 alone logs, validates on
the full val split and saves while the others wait at a barrier. ``--batch-size`` is per process;
scale ``--lr`` with the world size yourself if you want the linear rule.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from . import cache as lcache
from . import weights as lweights
from . import io as lio
from . import labels as llabels
from .checkpoint import CHECKPOINT_FORMAT, load_checkpoint, read_checkpoint, save_checkpoint, state_digest  # noqa: F401
from .dataset import CacheDataset, build_transforms, make_loader



# --------------------------------------------------------------------------------------------- arguments
def add_common_args(parser: argparse.ArgumentParser, out_dir: str, **defaults) -> argparse.ArgumentParser:
    """Add the flags shared by the training scripts. ``defaults`` override per-script defaults (e.g. lr=0.02)."""
    d = dict(epochs=12, batch_size=4, lr=1e-4, optimizer="adamw", weight_decay=1e-4, momentum=0.9,
             warmup_steps=500, schedule="cosine", clip_grad=0.0, workers=4, log_every=20)
    unknown = set(defaults) - set(d)
    if unknown:
        raise ValueError(f"add_common_args: unknown defaults {sorted(unknown)}")
    d.update(defaults)
    g = parser.add_argument_group("data and output")
    g.add_argument("--prepared-dir", type=Path, default=Path("work/prepared"),
                   help="01_prepare_data.py output (the cache)")
    g.add_argument("--out-dir", type=Path, default=Path(out_dir), help="where checkpoints, logs and plots go")
    g.add_argument("--workers", type=int, default=d["workers"], help="DataLoader worker processes per rank")
    g.add_argument("--max-steps-per-epoch", type=int, default=0, help="cap steps per epoch (quick runs); 0 = all")
    g.add_argument("--max-val-images", type=int, default=0, help="validate on the first N val images; 0 = all")
    g = parser.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=d["epochs"], help="total epochs")
    g.add_argument("--batch-size", type=int, default=d["batch_size"], help="images per step per process")
    g.add_argument("--lr", type=float, default=d["lr"], help="peak learning rate")
    g.add_argument("--optimizer", choices=["sgd", "adamw"], default=d["optimizer"], help="optimizer")
    g.add_argument("--weight-decay", type=float, default=d["weight_decay"],
                   help="weight decay (not applied to biases and norm weights)")
    g.add_argument("--momentum", type=float, default=d["momentum"], help="SGD momentum")
    g.add_argument("--warmup-steps", type=int, default=d["warmup_steps"], help="linear warmup steps from lr/1000")
    g.add_argument("--schedule", choices=["cosine", "step", "none"], default=d["schedule"],
                   help="lr after warmup: cosine to 0 over the run, step (x--lr-gamma at --lr-milestones), none")
    g.add_argument("--lr-milestones", type=str, default="",
                   help="epochs where the step schedule decays, e.g. '8,11' (default: 2/3 and 8/9 of --epochs)")
    g.add_argument("--lr-gamma", type=float, default=0.1, help="step schedule decay factor")
    g.add_argument("--clip-grad", type=float, default=d["clip_grad"], help="max gradient norm; 0 = no clipping")
    g.add_argument("--amp", choices=["auto", "bf16", "off"], default="auto",
                   help="mixed precision: auto = bf16 autocast on CUDA, off on CPU")
    g.add_argument("--channels-last", action="store_true",
                   help="keep the model's 4-D weights (and so its conv activations) in channels-last (NHWC) "
                        "layout: often faster for convolutions on tensor-core GPUs; bench/train_bench.py measures "
                        "it against the default layout")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto = cuda if available")
    g.add_argument("--seed", type=int, default=0, help="seed for weights, data order and augmentation")
    g.add_argument("--threads", type=int, default=0, help="torch.set_num_threads on CPU; 0 = torch's default")
    g.add_argument("--sync-bn", action="store_true",
                   help="with several CUDA processes: SyncBatchNorm (BatchNorm statistics over the global batch)")
    g.add_argument("--ddp-find-unused", action=argparse.BooleanOptionalAction, default=True,
                   help="DDP find_unused_parameters (needed when a head gets no loss, e.g. a batch without "
                        "instances of --mask-classes)")
    g = parser.add_argument_group("logging, validation, checkpoints")
    g.add_argument("--log-every", type=int, default=d["log_every"], help="write a train record every N steps")
    g.add_argument("--val-every", type=int, default=1, help="validate every N epochs (and after the last); 0 = never")
    g.add_argument("--val-score-thresh", type=float, default=0.5,
                   help="detections below this score are dropped for the Kaggle metric (COCO AP uses all)")
    g.add_argument("--checkpoint-every-steps", type=int, default=0,
                   help="also save checkpoint.pth every N steps (mid-epoch resume); 0 = only at epoch ends")
    g.add_argument("--stop-after-epoch", type=int, default=0,
                   help="stop after this epoch (to split a run into jobs; continue with --resume auto); 0 = no")
    g.add_argument("--resume", type=str, default="",
                   help="checkpoint to continue from, or 'auto' = OUT_DIR/checkpoint.pth if it exists")
    g = parser.add_argument_group("augmentation and model")
    g.add_argument("--scale-range", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="multi-scale training: each image's resize sizes (--min-size/--max-size or --image-size) "
                        "times U(LO, HI), e.g. 0.6 1.0; values > 8 are short-side pixels (divided by the min size)")
    g.add_argument("--no-hflip", action="store_true", help="disable random horizontal flips")
    g.add_argument("--color-jitter", type=float, default=0.2, help="brightness/contrast/saturation jitter; 0 = off")
    g.add_argument("--mask-classes", type=str, default=None,
                   help="categories that get masks, e.g. 'garments', 'parts', '0-26,31' (default: all)")
    g = parser.add_argument_group("starting weights (lib/weights.py; default: random)")
    g.add_argument("--weights-backbone", type=str, default=None, metavar="imagenet|PATH",
                   help="ImageNet weights for the detector backbone / UNet encoder: 'imagenet' = torchvision's "
                        "file from the torch cache (else downloaded), or a local file such as "
                        "resnet50-0676ba61.pth; detectors then freeze BatchNorm (--trainable-backbone-layers)")
    g.add_argument("--pretrained", dest="weights_backbone", action="store_const", const="imagenet",
                   help="alias of --weights-backbone imagenet")
    g.add_argument("--weights", type=str, default=None, metavar="coco|PATH",
                   help="the whole model: 'coco' = torchvision's COCO Mask R-CNN (03/04, resnet50 or resnet50_v2; "
                        "the class-count layers start fresh, DeepMAC keeps its own mask head), a local copy of that "
                        "file, or a checkpoint of ours of the same arch (fine-tuning; its model config is kept)")
    return parser


def parse_levels(tokens, what: str = "anchor sizes", cast=int) -> list[list] | None:
    """``["16", "32", "64/96"]`` -> ``[[16], [32], [64, 96]]`` (one token per feature level, "/" inside a level)."""
    if not tokens:
        return None
    out = []
    for tok in tokens:
        try:
            out.append([cast(x) for x in str(tok).split("/") if x.strip()])
        except ValueError:
            raise ValueError(f"bad {what} level {tok!r}: expected numbers separated by '/'") from None
        if not out[-1]:
            raise ValueError(f"bad {what} level {tok!r}: empty")
    return out


def add_detector_args(parser: argparse.ArgumentParser, deepmac: bool = False) -> argparse.ArgumentParser:
    """Model flags of 03_train_maskrcnn.py / 04_train_deepmac.py (all default to the model's own defaults)."""
    g = parser.add_argument_group("detector (defaults: lib/models/maskrcnn.py DEFAULT_CONFIG)")
    g.add_argument("--backbone", choices=["resnet50", "resnet50_v2", "resnet18", "resnet34", "mobilenet_v3"],
                   default=None, help="FPN backbone (default resnet50)")
    g.add_argument("--trainable-backbone-layers", type=int, default=None,
                   help="with pretrained weights (--weights-backbone, --weights coco): backbone stages that train "
                        "(0-5, default 3)")
    g.add_argument("--min-size", type=int, default=None, help="short side the model resizes images to")
    g.add_argument("--max-size", type=int, default=None, help="cap on the long side after resizing")
    g.add_argument("--anchor-sizes", nargs="+", default=None, metavar="LEVEL",
                   help="anchor sizes, one token per feature level, '/' for several in a level, "
                        "e.g. 16 32 64 128 256 (resnet: 5 levels, mobilenet_v3: 3)")
    g.add_argument("--aspect-ratios", nargs="+", type=float, default=None,
                   help="anchor aspect ratios used on every level, e.g. 0.5 1 2")
    g.add_argument("--rpn-pre-nms-train", type=int, default=None, help="RPN proposals kept before NMS (train)")
    g.add_argument("--rpn-pre-nms-test", type=int, default=None, help="RPN proposals kept before NMS (eval)")
    g.add_argument("--rpn-post-nms-train", type=int, default=None, help="RPN proposals kept after NMS (train)")
    g.add_argument("--rpn-post-nms-test", type=int, default=None, help="RPN proposals kept after NMS (eval)")
    g.add_argument("--rpn-batch-size-per-image", type=int, default=None, help="anchors sampled per image for the RPN loss")
    g.add_argument("--box-batch-size-per-image", type=int, default=None, help="RoIs sampled per image for the box loss")
    g.add_argument("--detections-per-img", type=int, default=None, help="max detections per image")
    g.add_argument("--box-score-thresh", type=float, default=None, help="drop detections below this score")
    g.add_argument("--box-nms-thresh", type=float, default=None, help="per-class NMS IoU of the box head")
    g.add_argument("--mask-roi-size", type=int, default=None,
                   help="RoIAlign size of the mask branch (Mask R-CNN 14, DeepMAC 32)")
    g.add_argument("--attr-head", action="store_true",
                   help="add the multi-label attribute head (92 attributes, on the box head's RoI features); "
                        "predictions then carry attr_scores for 06's --attributes on")
    g.add_argument("--attr-loss-weight", type=float, default=None, help="factor on loss_attr (default 1.0)")
    if deepmac:
        g = parser.add_argument_group("DeepMAC mask head (defaults: lib/models/deepmac.py DEFAULT_CONFIG)")
        g.add_argument("--mask-head-depth", type=int, default=None, help="down/up levels per hourglass")
        g.add_argument("--mask-head-width", type=int, default=None, help="channels in the mask head")
        g.add_argument("--mask-head-stacks", type=int, default=None, help="hourglasses in sequence")
        g.add_argument("--gt-box-jitter", type=float, default=None,
                       help="max GT box corner shift (fraction of width/height) for the mask loss")
        g.add_argument("--mask-max-instances", type=int, default=None, help="GT boxes per image used by the mask loss")
        g.add_argument("--class-specific-masks", action="store_true",
                       help="one mask channel per class (default: class-agnostic masks)")
    else:
        g.add_argument("--class-agnostic-masks", action="store_true",
                       help="one mask channel for every class (default: one per class, as torchvision)")
    return parser


def detector_overrides(args) -> dict:
    """Model config overrides from :func:`add_detector_args` flags (None = keep the model default)."""
    ratios = None
    if args.aspect_ratios:
        n_levels = len(parse_levels(args.anchor_sizes)) if args.anchor_sizes else (
            3 if args.backbone == "mobilenet_v3" else 5)
        ratios = [list(args.aspect_ratios)] * n_levels
    o = {"backbone": args.backbone, "trainable_backbone_layers": args.trainable_backbone_layers,
         "min_size": args.min_size, "max_size": args.max_size, "anchor_sizes": parse_levels(args.anchor_sizes),
         "aspect_ratios": ratios, "rpn_pre_nms_top_n_train": args.rpn_pre_nms_train,
         "rpn_pre_nms_top_n_test": args.rpn_pre_nms_test, "rpn_post_nms_top_n_train": args.rpn_post_nms_train,
         "rpn_post_nms_top_n_test": args.rpn_post_nms_test, "rpn_batch_size_per_image": args.rpn_batch_size_per_image,
         "box_batch_size_per_image": args.box_batch_size_per_image, "box_detections_per_img": args.detections_per_img,
         "box_score_thresh": args.box_score_thresh, "box_nms_thresh": args.box_nms_thresh,
         "mask_roi_size": args.mask_roi_size,
         "attr_head": True if getattr(args, "attr_head", False) else None,
         "attr_loss_weight": getattr(args, "attr_loss_weight", None)}
    if hasattr(args, "mask_head_depth"):
        o.update({"mask_head_depth": args.mask_head_depth, "mask_head_width": args.mask_head_width,
                  "mask_head_stacks": args.mask_head_stacks, "gt_box_jitter": args.gt_box_jitter,
                  "mask_max_instances": args.mask_max_instances,
                  "class_agnostic_masks": False if args.class_specific_masks else None})
    elif getattr(args, "class_agnostic_masks", False):
        o["class_agnostic_masks"] = True
    return {k: v for k, v in o.items() if v is not None}


def train_scale_range(scale_range, min_size: int) -> list[float] | None:
    """``--scale-range LO HI`` -> the model config's ``train_scale_range`` factors (None = off).

    Values above 8 are short-side pixel sizes and are divided by the model's ``min_size``.
    """
    if scale_range is None:
        return None
    lo, hi = (float(v) for v in scale_range)
    if hi > 8:
        lo, hi = lo / float(min_size), hi / float(min_size)
    if not 0 < lo <= hi:
        raise ValueError(f"--scale-range must be 0 < LO <= HI, got {tuple(scale_range)}")
    return [round(lo, 6), round(hi, 6)]


def _json_safe(v):
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def args_dict(args) -> dict:
    """``vars(args)`` with Paths/tuples made JSON-safe."""
    return _json_safe(vars(args))


# --------------------------------------------------------------------------------------------- environment
def setup_distributed(device_arg: str = "auto") -> dict:
    """Init torch.distributed when launched by torchrun (``WORLD_SIZE`` > 1); pick the device.

    Returns dict(distributed, rank, world_size, local_rank, device).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device_arg == "auto" else device_arg == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but CUDA is not available")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    distributed = world > 1
    if distributed and not dist.is_initialized():
        # Long timeout: ranks > 0 wait at a barrier while rank 0 validates on the whole val split.
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(hours=2),
                                **({"device_id": device} if use_cuda else {}))
    return dict(distributed=distributed, rank=rank, world_size=world, local_rank=local_rank, device=device)


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and random."""
    seed = int(seed) % 2**31
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def amp_dtype(amp: str, device: torch.device):
    """torch dtype for autocast, or None for full precision.

    ``auto`` = bf16 on a CUDA device with native bf16 (Ampere and newer); full precision on CPU and on
    older GPUs (a T4 or P100 only emulates bf16, which is slower than fp32).
    """
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        try:
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch without the argument: native bf16 starts at compute capability 8.0
            native = torch.cuda.get_device_capability(device)[0] >= 8
        return torch.bfloat16 if native else None
    return None


def _rng_state() -> dict:
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
    }


def _gather_rng_states(world: int) -> list[dict]:
    """The :func:`_rng_state` of every rank (all ranks must call it), in rank order."""
    out = [None] * world
    dist.all_gather_object(out, _rng_state())
    return out


def _drop_records_after(log_path: Path, step: int) -> None:
    """Rewrite a metrics log without the records past ``step`` (atomically); torn lines are dropped too."""
    if not log_path.exists():
        return
    recs = lio.read_jsonl(log_path)
    keep = [r for r in recs if not (isinstance(r.get("step"), (int, float)) and r["step"] > step
                                    and r.get("kind") in ("train", "epoch"))]
    text = "".join(lio.to_json(r, indent=None) + "\n" for r in keep)
    if text != log_path.read_text(encoding="utf-8", errors="replace"):
        lio.atomic_write_text(log_path, text)


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))


# --------------------------------------------------------------------------------------------- optimisation
def build_optimizer(model: torch.nn.Module, args, device: torch.device) -> torch.optim.Optimizer:
    """SGD or AdamW; no weight decay on 1-D parameters (biases, norm weights); fused kernels on CUDA."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    kw = {"fused": True} if device.type == "cuda" else {}
    if args.optimizer == "sgd":
        make = lambda **k: torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, **k)  # noqa: E731
    else:
        make = lambda **k: torch.optim.AdamW(groups, lr=args.lr, **k)  # noqa: E731
    try:
        return make(**kw)
    except (TypeError, RuntimeError, ValueError):
        return make()


def lr_factor_fn(schedule: str, total_steps: int, warmup_steps: int, milestones_steps=(), gamma: float = 0.1):
    """step -> multiplier of the peak lr: linear warmup from 1/1000, then cosine to 0 / steps / constant."""
    total_steps = max(1, int(total_steps))
    warmup_steps = max(0, int(warmup_steps))
    milestones_steps = sorted(int(m) for m in milestones_steps)

    def f(step: int) -> float:
        if step < warmup_steps:
            a = step / warmup_steps
            w = 1e-3 * (1 - a) + a
        else:
            w = 1.0
        if schedule == "cosine":
            t = min(1.0, max(0.0, (step - warmup_steps) / max(1, total_steps - warmup_steps)))
            return w * 0.5 * (1 + math.cos(math.pi * t))
        if schedule == "step":
            return w * gamma ** sum(step >= m for m in milestones_steps)
        return w

    return f


def _milestones(args, steps_per_epoch: int) -> list[int]:
    if args.lr_milestones.strip():
        try:
            eps = [int(x) for x in args.lr_milestones.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"--lr-milestones {args.lr_milestones!r}: expected comma-separated epochs") from None
    else:
        eps = sorted({max(1, round(args.epochs * 2 / 3)), max(1, round(args.epochs * 8 / 9))})
    return [e * steps_per_epoch for e in eps]


# --------------------------------------------------------------------------------------------- data helpers
def _to_device(images, targets, device):
    images = [im.as_subclass(torch.Tensor).to(device, non_blocking=True) for im in images]
    targets = [{k: t[k].as_subclass(torch.Tensor).to(device, non_blocking=True)
                for k in ("boxes", "labels", "masks", "attributes") if k in t} for t in targets]
    return images, targets


def _autocast(device: torch.device, dtype):
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset, device: torch.device, dtype=None, batch_size: int = 2,
             score_thresh: float = 0.5, mask_thresh: float = 0.5, progress: bool = True) -> dict:
    """Validate on ``dataset`` (a :class:`CacheDataset` with eval transforms).

    Predicted masks are ``prob >= mask_thresh``, classes are categories (label - 1). The Kaggle metric uses
    detections with ``score >= score_thresh``; COCO mask AP uses all of them. Returns ``dict(kaggle,
    kaggle_all, num_images, per_class, coco, attr)`` (``kaggle_all``: Kaggle metric with every detection;
    ``attr``: :class:`lib.metric.AttributeEvaluator` summary of the kept detections when the model predicts
    attributes, else None).
    """
    from tqdm import tqdm

    from .metric import AttributeEvaluator, Evaluator

    was_training = model.training
    model.eval()
    ev_k = Evaluator(coco=False)
    ev_all = Evaluator(coco=True)
    ev_attr = None
    loader = make_loader(dataset, batch_size=batch_size, shuffle=False, workers=0)
    for images, targets in tqdm(loader, desc="val", unit="batch", disable=not progress, leave=False):
        with _autocast(device, dtype):
            outs = model([im.as_subclass(torch.Tensor).to(device) for im in images])
        for out, t in zip(outs, targets):
            gt_masks = t["masks"].as_subclass(torch.Tensor).numpy()
            gt_cls = (t["labels"] - 1).numpy()
            m = out["masks"]
            pm = (m[:, 0] >= mask_thresh).cpu().numpy() if m.numel() else np.zeros((0, *gt_masks.shape[1:]), bool)
            pc = (out["labels"] - 1).cpu().numpy()
            ps = out["scores"].float().cpu().numpy()
            ev_all.add(t["image_id"], gt_masks, gt_cls, pm, pc, ps)
            keep = ps >= score_thresh
            ev_k.add(t["image_id"], gt_masks, gt_cls, pm[keep], pc[keep], ps[keep])
            if out.get("attr_scores") is not None and "attributes" in t:
                ev_attr = ev_attr or AttributeEvaluator()
                ev_attr.add(gt_masks, gt_cls, t["attributes"].as_subclass(torch.Tensor).numpy(), pm[keep], pc[keep],
                            ps[keep], out["attr_scores"].float().cpu().numpy()[keep])
    if was_training:
        model.train()
    s_k, s_all = ev_k.summary(), ev_all.summary()
    return {"kaggle": s_k["kaggle"], "kaggle_all": s_all["kaggle"], "num_images": s_k["num_images"],
            "per_class": s_k["per_class"], "coco": s_all["coco"], "score_thresh": score_thresh,
            "attr": ev_attr.summary() if ev_attr is not None else None}


def _finite_or_none(x):
    return float(x) if x is not None and math.isfinite(float(x)) else None


# --------------------------------------------------------------------------------------------- training
class NonFiniteLossError(FloatingPointError):
    """Raised when a loss or gradient norm is NaN/inf; checkpoint.pth keeps the last good state."""


def train_step(net, images, targets, optimizer, params, clip_grad: float, device: torch.device, dtype=None,
               distributed: bool = False) -> tuple[float, dict[str, float], float]:
    """One optimisation step: forward under autocast, backward, gradient clipping, ``optimizer.step()``.

    ``images``/``targets`` are already on ``device``; ``clip_grad`` 0 = no clipping (the norm is still
    computed). Returns ``(total loss, {loss part: value}, gradient norm)`` as Python floats, read with two
    device-to-host copies per step (all loss values stacked, then the norm) instead of one per value.
    Raises :class:`NonFiniteLossError` (``"non-finite loss: ..."`` / ``"non-finite gradient norm: ..."``)
    before the weights change when the loss (on any rank, under DDP) or the gradient norm is not finite.
    """
    with _autocast(device, dtype):
        loss_dict = net(images, targets)
    loss = sum(loss_dict.values())
    values = torch.stack([loss.detach().float(), *(v.detach().float().reshape(()) for v in loss_dict.values())])
    if distributed:  # every rank must stop together: share the "some value is not finite" flag
        bad = (~torch.isfinite(values)).any().float().reshape(1)
        dist.all_reduce(bad)
        bad_anywhere = bad.item() > 0
    values = values.tolist()
    total, parts = values[0], dict(zip(loss_dict, values[1:]))
    bad_here = not all(math.isfinite(v) for v in values)
    if bad_here or distributed and bad_anywhere:
        detail = ", ".join(f"{k}={v:.6g}" for k, v in parts.items())
        raise NonFiniteLossError(f"non-finite loss: loss={total:.6g} ({detail or 'no loss parts'})"
                                 f"{'' if bad_here else ' on some rank'}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    gn = float(torch.nn.utils.clip_grad_norm_(params, clip_grad if clip_grad > 0 else float("inf")))
    if not math.isfinite(gn):
        raise NonFiniteLossError(f"non-finite gradient norm: grad_norm={gn}, loss={total:.6g}")
    optimizer.step()
    return total, parts, gn


def run_training(arch: str, model_overrides: dict, args, stage: str | None = None) -> dict:
    """Train ``arch`` (a ``lib.models.BUILDERS`` name) with ``args`` from :func:`add_common_args`.

    ``model_overrides``: config keys from the script's model flags (None values are ignored, so the
    model's defaults apply). Returns the final summary (also in ``out_dir/meta.json``). Rank 0 holds the
    lock of ``out_dir`` (:func:`lib.io.lock_dir`) until it returns.
    """
    with contextlib.ExitStack() as held:
        return _run_training(arch, model_overrides, args, stage, held)


def _run_training(arch: str, model_overrides: dict, args, stage: str | None, held: contextlib.ExitStack) -> dict:
    from tqdm import tqdm

    from . import models as lmodels
    from .viz import plot_curves

    stage = stage or f"train_{arch}"
    env = setup_distributed(args.device)
    rank, world, device, distributed = env["rank"], env["world_size"], env["device"], env["distributed"]
    main = rank == 0
    if device.type == "cpu" and args.threads > 0:
        torch.set_num_threads(args.threads)
    # Detectors see a different number of RoIs (and image sizes) every step: with benchmark=True cuDNN
    # re-tunes its convolution algorithms for each new shape, which makes training 3-4x slower.
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    dtype = amp_dtype(args.amp, device)
    out_dir = Path(args.out_dir)
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        try:  # fail before touching anything when the directory cannot take new files
            with tempfile.TemporaryFile(dir=out_dir):
                pass
        except OSError as e:
            raise OSError(e.errno, f"--out-dir {out_dir} is not writable: {e.strerror or e}") from e
        held.enter_context(lio.lock_dir(out_dir, "training run"))
        lio.remove_temp_files(out_dir)  # half-written files of a killed run (never read)
    ckpt_path, best_path = out_dir / "checkpoint.pth", out_dir / "best.pth"
    log_path, png_path = out_dir / "metrics.jsonl", out_dir / "curves.png"

    # ---- data
    meta = lcache.load_meta(args.prepared_dir)
    cats = meta.get("labels", {}).get("categories")
    if not cats:
        raise ValueError(f"{Path(args.prepared_dir) / 'meta.json'}: no labels.categories (rerun 01_prepare_data.py)")
    label_names = [c["name"] if isinstance(c, dict) else str(c) for c in cats]
    # Multi-scale training happens in the model's own resize (config train_scale_range): scaling the image
    # here would be undone by it.
    train_ds = CacheDataset(args.prepared_dir, "train", build_transforms(
        True, hflip=0.0 if args.no_hflip else 0.5, color_jitter=args.color_jitter))
    if len(train_ds) == 0:
        raise ValueError(f"{args.prepared_dir}: the train split is empty")
    val_ds = CacheDataset(args.prepared_dir, "val", build_transforms(False))
    if args.max_val_images and len(val_ds) > args.max_val_images:
        val_ds = CacheDataset(args.prepared_dir, "val", build_transforms(False),
                              image_ids=val_ds.image_ids[: args.max_val_images])
    loader = make_loader(train_ds, args.batch_size, shuffle=True, workers=args.workers, distributed=distributed,
                         seed=args.seed)
    steps_per_epoch = len(loader)
    if args.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, args.max_steps_per_epoch)
    total_steps = steps_per_epoch * args.epochs

    # ---- model config
    overrides = {k: v for k, v in (model_overrides or {}).items() if v is not None}
    overrides["num_classes"] = len(label_names) + 1
    if args.mask_classes:
        overrides["mask_classes"] = list(llabels.resolve_category_spec(args.mask_classes, len(label_names)))
    config = lmodels.default_config(arch, **overrides)
    if args.scale_range is not None:
        overrides["train_scale_range"] = config["train_scale_range"] = train_scale_range(args.scale_range,
                                                                                         config["min_size"])

    resume_ckpt = None
    if args.resume:
        rpath = ckpt_path if args.resume == "auto" else Path(args.resume)
        if rpath.exists() or args.resume != "auto":
            resume_ckpt = read_checkpoint(rpath)
            if resume_ckpt["config"].get("arch") != arch:
                raise ValueError(f"{rpath}: checkpoint is for arch {resume_ckpt['config'].get('arch')!r}, "
                                 f"not {arch!r}")
            saved = dict(resume_ckpt["config"])  # the run continues with the model it started with
            changed = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
            if changed and main:
                print(f"resume: keeping the checkpoint's model config; ignoring new values of {changed}")
            config = saved

    init_plan = None
    if resume_ckpt is None:  # a resumed run has its weights in the checkpoint
        config, init_plan = lweights.plan_init(arch, config, overrides, args.weights, args.weights_backbone)

    seed_everything(args.seed)
    model = lmodels.build_model(config)
    init_report = resume_ckpt.get("init") if resume_ckpt is not None else None
    if init_plan is not None:
        init_report = lweights.apply_init(model, arch, config, init_plan)
        del init_plan
        if main:
            print(lweights.describe(init_report))
    model = model.to(device)
    if getattr(args, "channels_last", False):
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, args, device)
    lr_f = lr_factor_fn(args.schedule, total_steps, args.warmup_steps, _milestones(args, steps_per_epoch),
                        args.lr_gamma)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_f)

    start_epoch, start_iter, global_step, best_score = 0, 0, 0, -math.inf
    last_metrics: dict = {}
    if resume_ckpt is not None:
        model.load_state_dict(resume_ckpt["model"])
        if resume_ckpt.get("optimizer") is not None:
            optimizer.load_state_dict(resume_ckpt["optimizer"])
        if resume_ckpt.get("scheduler") is not None:
            scheduler.load_state_dict(resume_ckpt["scheduler"])
        start_epoch = int(resume_ckpt.get("epoch", 0))
        start_iter = int(resume_ckpt.get("iter_in_epoch", 0))
        global_step = int(resume_ckpt.get("global_step", 0))
        best_score = float(resume_ckpt.get("best_score", -math.inf))
        last_metrics = dict(resume_ckpt.get("metrics") or {})
        if start_iter >= steps_per_epoch:
            start_epoch, start_iter = start_epoch + 1, 0
        if main:
            _drop_records_after(log_path, global_step)  # logged after the checkpoint: they are redone
            lio.append_jsonl(log_path, {"kind": "resume", "from": str(rpath), "epoch": start_epoch,
                                        "iter_in_epoch": start_iter, "step": global_step})
        del resume_ckpt["model"], resume_ckpt["optimizer"]

    net = model
    if distributed and args.sync_bn:
        if device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            net = model
        elif main:
            print("--sync-bn needs CUDA; keeping per-process BatchNorm")
    if distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=args.ddp_find_unused)
    params = [p for p in model.parameters() if p.requires_grad]

    run_args = args_dict(args)
    data_summary = {"prepared_dir": str(args.prepared_dir), "num_train": len(train_ds), "num_val": len(val_ds),
                    "long_side": meta.get("long_side"), "num_categories": len(label_names),
                    "cache_counts": meta.get("counts")}

    def make_ckpt(epoch_done: int, iter_in_epoch: int) -> dict:
        return {"format": CHECKPOINT_FORMAT, "stage": stage, "arch": arch, "config": config,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": None, "epoch": epoch_done,
                "iter_in_epoch": iter_in_epoch, "global_step": global_step, "rng": _rng_state(),
                "args": run_args, "labels": label_names, "best_score": best_score, "metrics": last_metrics,
                "world_size": world, "init": init_report}

    def check_params_finite(where: str) -> None:
        bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise NonFiniteLossError(f"non-finite weights {where} ({', '.join(bad[:5])}); not saving - "
                                     f"{ckpt_path} keeps the last good state")

    def write_meta(status: str, extra: dict | None = None) -> dict:
        m = {"stage": stage, "arch": arch, "status": status, "config": config, "init": init_report, "args": run_args,
             "data": data_summary, "world_size": world, "device": str(device),
             "amp": str(dtype).replace("torch.", "") if dtype else "off",
             "epochs_done": epoch_done_count, "global_step": global_step,
             "best_val_kaggle": best_score if math.isfinite(best_score) else None,
             "final_metrics": last_metrics,
             "checkpoints": {"last": str(ckpt_path), "best": str(best_path) if best_path.exists() else None},
             "files": {"metrics": str(log_path), "curves": str(png_path), "val_scores": str(out_dir / "val_scores.json")},
             "time_s": round(time.time() - t_start, 1)}
        m.update(extra or {})
        lio.atomic_write_json(out_dir / "meta.json", _json_safe(m))
        return m

    t_start = time.time()
    epoch_done_count = start_epoch
    val_history: list = []
    if main and (out_dir / "val_scores.json").exists() and resume_ckpt is not None:
        val_history = [h for h in lio.read_json(out_dir / "val_scores.json").get("history", [])
                       if h.get("epoch", 0) <= start_epoch]  # later epochs are redone
    last_epoch = args.epochs - 1
    if args.stop_after_epoch:
        last_epoch = min(last_epoch, args.stop_after_epoch - 1)
    if main:
        write_meta("running")

    for epoch in range(start_epoch, last_epoch + 1):
        skip = start_iter if epoch == start_epoch else 0
        if skip and resume_ckpt is not None and resume_ckpt.get("rng"):
            per_rank = resume_ckpt.get("rng_ranks") or []
            _set_rng_state(per_rank[rank] if len(per_rank) == world else resume_ckpt["rng"])
        else:
            seed_everything(args.seed + 1000 * (epoch + 1) + rank)
        loader.sampler.set_epoch(epoch)
        loader.sampler.set_skip(skip * args.batch_size)
        loader.generator.manual_seed(args.seed + epoch)
        net.train()
        sums: dict[str, float] = {}
        n_steps, n_images, t_epoch = 0, 0, time.time()
        if skip and resume_ckpt is not None and resume_ckpt.get("epoch_sums"):
            # the epoch's running loss sums up to the checkpoint, so its epoch record means the whole epoch
            part = resume_ckpt["epoch_sums"]
            sums = {str(k): float(v) for k, v in part["sums"].items()}
            n_steps, n_images = int(part["steps"]), int(part["images"])
        bar = tqdm(total=steps_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{args.epochs}", unit="step",
                   disable=not main, dynamic_ncols=True)
        it = skip
        t_step = time.time()
        for images, targets in loader:
            if it >= steps_per_epoch:
                break
            images, targets = _to_device(images, targets, device)
            try:
                total, parts, gn = train_step(net, images, targets, optimizer, params, args.clip_grad, device,
                                              dtype, distributed)
            except NonFiniteLossError as e:
                what, _, detail = str(e).partition(": ")
                raise NonFiniteLossError(
                    f"{what} at epoch {epoch + 1}, step {it + 1} of the epoch (global step {global_step + 1}): "
                    f"{detail}; stopped without saving - {ckpt_path} keeps the last good state") from None
            scheduler.step()
            global_step += 1
            it += 1
            n_steps += 1
            n_images += len(images) * world
            dt = time.time() - t_step
            t_step = time.time()
            sums["loss"] = sums.get("loss", 0.0) + total
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            if main:
                lr = optimizer.param_groups[0]["lr"]
                bar.set_postfix(loss=f"{total:.3f}", lr=f"{lr:.2e}")
                bar.update(1)
                if args.log_every and (global_step % args.log_every == 0 or it == steps_per_epoch):
                    rec = {"kind": "train", "epoch": epoch + 1, "iter": it, "step": global_step, "loss": total}
                    rec.update({k if k.startswith("loss") else f"loss_{k}": v for k, v in parts.items()})
                    rec.update({"lr": lr, "grad_norm": gn, "step_time": round(dt, 4),
                                "images_per_s": round(len(images) * world / max(dt, 1e-9), 3)})
                    lio.append_jsonl(log_path, rec)
            if args.checkpoint_every_steps and global_step % args.checkpoint_every_steps == 0 \
                    and it < steps_per_epoch:
                check_params_finite(f"at global step {global_step}")
                rng_ranks = _gather_rng_states(world) if distributed else None  # every rank takes part
                if main:
                    ck = make_ckpt(epoch, it)
                    ck["epoch_sums"] = {"sums": dict(sums), "steps": n_steps, "images": n_images}
                    if rng_ranks is not None:
                        ck["rng_ranks"] = rng_ranks  # each rank resumes with its own generator states
                    save_checkpoint(ckpt_path, ck)
                if distributed:
                    dist.barrier()
        bar.close()
        epoch_time = time.time() - t_epoch

        # ---- end of epoch: validate, save, log (rank 0); others wait
        check_params_finite(f"after epoch {epoch + 1}")
        if main:
            rec = {"kind": "epoch", "epoch": epoch + 1, "step": global_step, "steps": n_steps,
                   "epoch_time": round(epoch_time, 2), "images_per_s": round(n_images / max(epoch_time, 1e-9), 3),
                   "lr": optimizer.param_groups[0]["lr"]}
            if device.type == "cuda":
                rec["max_mem_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
            for k, v in sums.items():
                rec[f"train_{k}" if k == "loss" or k.startswith("loss") else f"train_loss_{k}"] = v / max(n_steps, 1)
            do_val = len(val_ds) > 0 and args.val_every > 0 and (
                (epoch + 1) % args.val_every == 0 or epoch == args.epochs - 1)
            improved = False
            if do_val:
                t_val = time.time()
                res = evaluate(model, val_ds, device, dtype, batch_size=args.batch_size,
                               score_thresh=args.val_score_thresh, progress=True)
                coco = res["coco"] or {}
                rec.update({"val_kaggle": res["kaggle"], "val_kaggle_all": res["kaggle_all"],
                            "val_AP": _finite_or_none(coco.get("AP")), "val_AP50": _finite_or_none(coco.get("AP50")),
                            "val_AP75": _finite_or_none(coco.get("AP75")), "val_images": res["num_images"],
                            "val_time": round(time.time() - t_val, 2)})
                if res["attr"] is not None:
                    rec.update({"val_attr_micro_f1": _finite_or_none(res["attr"].get("micro_f1")),
                                "val_attr_macro_f1": _finite_or_none(res["attr"].get("macro_f1"))})
                score = res["kaggle"]
                improved = math.isfinite(score) and score > best_score
                if improved:
                    best_score = score
                entry = {"epoch": epoch + 1, "step": global_step, **res}
                val_history.append({"epoch": epoch + 1, "kaggle": res["kaggle"], "AP": rec["val_AP"]})
                vs = {"latest": entry, "history": val_history}
                old = lio.read_json(out_dir / "val_scores.json") if (out_dir / "val_scores.json").exists() else {}
                vs["best"] = entry if improved else old.get("best")
                lio.atomic_write_json(out_dir / "val_scores.json", _json_safe(vs))
            last_metrics = _json_safe(rec)
            epoch_done_count = epoch + 1
            # Order matters when the process is killed in between: the log record and best.pth come before
            # checkpoint.pth, so a resume from the previous checkpoint redoes this epoch (dropping its record)
            # and never continues from a state whose record or best.pth is missing.
            lio.append_jsonl(log_path, rec)
            ck = make_ckpt(epoch + 1, 0)
            if improved:
                save_checkpoint(best_path, ck)
            save_checkpoint(ckpt_path, ck)
            plot_curves(log_path, png_path, title=f"{stage} ({arch})")
            write_meta("running")
        epoch_done_count = epoch + 1
        if distributed:
            dist.barrier()

    summary = {}
    if main:
        status = "done" if epoch_done_count >= args.epochs else "stopped"
        summary = write_meta(status)
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return summary


__all__ = ["add_common_args", "add_detector_args", "detector_overrides", "parse_levels", "run_training", "load_checkpoint", "read_checkpoint", "save_checkpoint", "evaluate",
           "build_optimizer", "lr_factor_fn", "setup_distributed", "seed_everything", "amp_dtype", "args_dict",
           "NonFiniteLossError", "CHECKPOINT_FORMAT"]
