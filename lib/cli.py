"""Command-line flags of the scripts 01-06 and their translation into settings and configs.

:func:`add_common_args` (data, optimisation, logging, checkpoints, augmentation, starting weights) and
:func:`add_detector_args` (03/04's model flags) build the training parsers; :func:`detector_overrides` and
:func:`train_scale_range` turn parsed flags into ``lib.models`` config keys (``None`` = the model's default),
:func:`train_settings` into ``lib.engine.TrainSettings``. :func:`add_prepare_args` builds 01's parser,
:func:`add_predict_args` / :func:`predict_settings` 05's parser and ``lib.predict.PredictSettings``,
:func:`add_submission_args` / :func:`submission_settings` 06's parser and
``lib.make_submission.SubmissionSettings``. This is the one module that reads argparse Namespaces.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from . import io as lio


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each flag's default said once: argparse's ``(default: X)`` is added only where the help
    text does not already say what the default is (``(default: <data-dir>/train.csv)``) and the default is a
    value (not None, False or an empty list: a flag that is off or left to another rule)."""

    def _get_help_string(self, action):
        text = action.help or ""
        d = action.default
        if re.search(r"\bdefault\b", text, re.IGNORECASE) or d is None or d is False or (
                isinstance(d, (list, tuple)) and not d):
            return text
        return super()._get_help_string(action)


def add_common_args(parser: argparse.ArgumentParser, out_dir: str, **defaults) -> argparse.ArgumentParser:
    """Add the flags shared by the training scripts. ``defaults`` override per-script defaults (e.g. lr=0.02)."""
    d = dict(epochs=12, batch_size=4, lr=1e-4, optimizer="adamw", weight_decay=1e-4, momentum=0.9,
             warmup_steps=500, schedule="cosine", clip_grad=0.0, workers=4, log_every=20, aspect_ratio_group_factor=0)
    unknown = set(defaults) - set(d)
    if unknown:
        raise ValueError(f"add_common_args: unknown defaults {sorted(unknown)}")
    d.update(defaults)
    g = parser.add_argument_group("data and output")
    g.add_argument("--prepared-dir", type=Path, default=Path("work/prepared"),
                   help="01_prepare_data.py output (the prepared set)")
    g.add_argument("--out-dir", type=Path, default=Path(out_dir), help="where checkpoints, logs and plots go")
    g.add_argument("--workers", type=int, default=d["workers"], help="DataLoader worker processes per rank")
    g.add_argument("--max-steps-per-epoch", type=int, default=0, help="cap steps per epoch (quick runs); 0 = all")
    g.add_argument("--max-val-images", type=int, default=0, help="validate on the first N val images; 0 = all")
    g.add_argument("--aspect-ratio-group-factor", type=int, default=d["aspect_ratio_group_factor"],
                   help="batch images of similar aspect ratio (2k+1 log-spaced bins, as torchvision's references) "
                        "so a batch pads less; 0 = plain shuffled batches")
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
    g.add_argument("--accumulate", type=int, default=1, metavar="N",
                   help="gradient accumulation: each optimizer step sums the gradients of N batches (each loss / N), "
                        "so a 16 GB GPU reaches a recipe's batch: batch x N x GPUs images per step; --epochs, "
                        "--warmup-steps and the schedule count optimizer steps")
    g.add_argument("--lr-scale", choices=["none", "linear"], default="none",
                   help="linear: the learning rate is --lr x (GPUs x --batch-size x --accumulate) / --lr-base-batch "
                        "(the linear scaling rule; meta.json records the result)")
    g.add_argument("--lr-base-batch", type=int, default=16,
                   help="the images per optimizer step --lr is given for, with --lr-scale linear")
    g.add_argument("--ema-decay", type=float, default=0.0,
                   help="keep an exponential moving average of the weights (e.g. 0.999; 0 = off): validation, "
                        "best.pth's choice and 05 use it; the checkpoint keeps both")
    g.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], default="auto",
                   help="mixed precision: auto = bf16 autocast on GPUs with native bf16 (A100, H100), fp16 with a "
                        "gradient scaler on older GPUs (T4, V100, P100), off on CPU")
    g.add_argument("--channels-last", action="store_true",
                   help="keep the model's 4-D weights (and so its conv activations) in channels-last (NHWC) "
                        "layout: often faster for convolutions on tensor-core GPUs; bench/train_bench.py measures "
                        "it against the default layout")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto = cuda if available")
    g.add_argument("--seed", type=int, default=0, help="seed for weights, data order and augmentation")
    g.add_argument("--threads", type=int, default=0, help="torch.set_num_threads on CPU; 0 = torch's default")
    g.add_argument("--sync-bn", action="store_true",
                   help="with several CUDA processes: SyncBatchNorm (BatchNorm statistics over the global batch)")
    g.add_argument("--ddp-find-unused", action=argparse.BooleanOptionalAction, default=False,
                   help="DDP find_unused_parameters (an extra graph walk every step; not needed by these models: "
                        "every trainable parameter gets a gradient, also in batches without instances or without "
                        "--mask-classes instances, tests/test_models.py)")
    g = parser.add_argument_group("logging, validation, checkpoints")
    g.add_argument("--log-every", type=int, default=d["log_every"], help="write a train record every N steps")
    g.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True,
                   help="also write TensorBoard event files to OUT_DIR/tensorboard (tensorboard --logdir work)")
    g.add_argument("--val-every", type=int, default=1, help="validate every N epochs (and after the last); 0 = never")
    g.add_argument("--val-score-thresh", type=float, default=0.5,
                   help="detections below this score are dropped for the Kaggle metric (COCO AP uses all)")
    g.add_argument("--checkpoint-every-steps", type=int, default=0,
                   help="also save checkpoint.pth every N steps (mid-epoch resume); 0 = only at epoch ends")
    g.add_argument("--stop-after-epoch", type=int, default=0,
                   help="stop after this epoch (to split a run into jobs; continue with --resume auto); 0 = no")
    g.add_argument("--resume", type=str, default="",
                   help="checkpoint to continue from, or 'auto' = OUT_DIR/checkpoint.pth if it exists")
    g.add_argument("--keep-epochs", type=int, nargs="+", default=[], metavar="EPOCH",
                   help="also keep the checkpoints of these epochs as OUT_DIR/model_<epoch>.pth (torchvision's "
                        "references' name), e.g. 8 10 12 for a checkpoint ensemble (05 --checkpoints takes them)")
    g = parser.add_argument_group("augmentation and model")
    g.add_argument("--scale-range", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="multi-scale training: each image's resize sizes (--min-size/--max-size or --image-size) "
                        "times U(LO, HI), e.g. 0.6 1.0; values > 8 are short-side pixels (divided by the min size)")
    g.add_argument("--no-hflip", action="store_true", help="disable random horizontal flips")
    g.add_argument("--color-jitter", type=float, default=0.2, help="brightness/contrast/saturation jitter; 0 = off")
    g.add_argument("--lsj", type=int, default=0, metavar="SIZE",
                   help="large-scale jitter (Ghiasi et al. 2021, detectron2's LSJ configs) instead of --scale-range: "
                        "each training image scaled to fit SIZE x SIZE times U(0.1, 2.0), then randomly cropped or "
                        "padded (mean colour) to SIZE x SIZE with its instances; 0 = off. The model's own resize is "
                        "set to keep SIZE x SIZE images (its min and max size = SIZE, so test images get long side "
                        "SIZE, as in detectron2's LSJ configs); a different --min-size/--max-size (02: --image-size) "
                        "is an error. E.g. 1024")
    g.add_argument("--copy-paste", type=float, default=0.0, metavar="P",
                   help="simple copy-paste (Ghiasi et al. 2021): with probability P per training image, a random "
                        "subset of another image's instances in the batch is pasted on it at the same pixel positions "
                        "(top-left aligned; with --lsj all images are SIZE x SIZE, as in the paper); covered masks "
                        "are cut (one left with under 16 pixels is dropped), boxes follow the masks, pasted "
                        "instances keep their labels and attributes. Needs --batch-size >= 2; 0 = off")
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


def args_dict(args) -> dict:
    """``vars(args)`` with Paths/tuples made JSON-safe."""
    return lio.json_safe(vars(args))


def add_submission_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """06_make_submission.py's flags: prediction tables, the combination, post-processing overrides, scoring and
    tuning, output. The post-processing flags carry the names of :data:`lib.postprocess.POSTPROCESS_DEFAULTS`
    (:func:`postprocess_overrides`)."""
    p.add_argument("--predictions", nargs="+", default=[],
                   help="predictions.parquet files or 05 output directories (several -> ensemble)")
    p.add_argument("--models", nargs="+", default=None, help="use only these model names from the tables")
    p.add_argument("--ensemble-weights", nargs="+", type=float, default=None,
                   help="one weight per model used (default: the tuned combination in the params file, else equal)")
    p.add_argument("--ensemble-iou", type=float, default=0.5, help="mask IoU to fuse instances across models")
    p.add_argument("--min-votes", type=int, default=1, help="keep fused instances found by at least this many models")
    p.add_argument("--data-dir", default="data/synthetic",
                   help="Kaggle-layout directory (test/, sample_submission.csv)")
    p.add_argument("--out-dir", type=Path, default=Path("work/submission"),
                   help="where submission.csv, params.json, scores.json, meta.json and report/ go")
    p.add_argument("--mask-size", type=mask_size_arg, default=None, metavar="SIZE",
                   help="the frame of the submission's masks: N (N x N, the image resized without keeping its "
                        "aspect), 0 (each image's own size) or long:N (the image scaled so its long side is N, aspect "
                        "kept, short side floored). Default: the one --data-dir's edition is evaluated at, 512 for "
                        "2019 and long:1024 for 2020 (data/README.md). With --validate: the size FILE was written at "
                        "(default: 06's meta.json beside a submission.csv, else the edition's)")
    p.add_argument("--params", default=None,
                   help="post-processing params JSON (default: <out-dir>/params.json if it exists)")
    g = p.add_argument_group("post-processing overrides (default: from --params)")
    g.add_argument("--score-thresh", type=float, default=None, help="drop instances scoring below this")
    g.add_argument("--mask-thresh", type=float, default=None, help="binarise probabilities at >= this")
    g.add_argument("--nms-iou", type=float, default=None, help="per-category mask NMS: drop IoU > this")
    g.add_argument("--min-area", type=int, default=None, help="drop masks smaller than this (pixels)")
    g.add_argument("--overlap", choices=["score", "none"], default=None,
                   help="same-category overlap suppression by score, or none")
    g.add_argument("--keep-categories", default=None, help="only these categories, e.g. garments or 0-26,31")
    g.add_argument("--drop-categories", default=None, help="drop these categories, e.g. parts or 45")
    g.add_argument("--tune-drop-categories", action=argparse.BooleanOptionalAction, default=False,
                   help="with --tune / --tune-on: after the threshold grid, drop the categories whose predictions "
                        "lower the tuning split's score (a category the model never gets right only adds zeros "
                        "to the images' averages); saved in params.json. Needs a large tuning split: on the "
                        "demo's 12 val images it overfits")
    g.add_argument("--attributes", choices=["off", "on"], default=None, help="emit attributes in ClassIds")
    g.add_argument("--attr-thresh", type=float, default=None, help="attribute score threshold")
    p.add_argument("--gt", default=None,
                   help="ground truth to score on: train.csv-format CSV or COCO-format JSON, e.g. Fashionpedia's val "
                        "file (default: <data-dir>/test_ground_truth.csv)")
    p.add_argument("--no-score", action="store_true", help="do not score even if ground truth exists")
    p.add_argument("--tune", action="store_true", help="grid-search post-processing on --gt, save params.json, use it")
    p.add_argument("--tune-on", nargs="+", default=None, metavar="DIR",
                   help="05 output dirs of the prepared set's val split (with gt.csv): tune the combination and "
                        "post-processing there, save params.json, and apply them to --predictions")
    p.add_argument("--weight-choices", nargs="+", type=float, default=[1.0, 2.0],
                   help="per-model weights tried when tuning a combination (distinct ratios only)")
    p.add_argument("--max-models", type=int, default=0,
                   help="largest combination tried when tuning (0 = all models)")
    p.add_argument("--refine", type=int, default=3,
                   help="combinations searched over the whole grid after a first pass over score thresholds "
                        "(0 = whole grid for every combination)")
    p.add_argument("--tune-grid", default=None,
                   help='JSON grid for --tune, e.g. \'{"score_thresh": [0.4, 0.5], "mask_thresh": [0.45]}\'')
    p.add_argument("--validate", default=None, metavar="FILE",
                   help="only validate FILE against --data-dir's test images; exit 0 if valid, 1 if not")
    p.add_argument("--report-images", type=int, default=6,
                   help="images shown in <out-dir>/report/index.html (overlays per model); 0 = no report")
    p.add_argument("--processes", type=int, default=0,
                   help="worker processes for every pass over the images: tuning, scores, the submission (0 = one "
                        "per CPU, 1 = none)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def mask_size_arg(text: str):
    """06's ``--mask-size`` value in :func:`lib.submission.parse_mask_size`'s form; a bad one is argparse's error."""
    from .submission import parse_mask_size

    try:
        return parse_mask_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def postprocess_overrides(args) -> dict:
    """06's post-processing flags as :func:`lib.postprocess.resolve_params` overrides (None = not given)."""
    from .postprocess import POSTPROCESS_DEFAULTS

    return {k: getattr(args, k) for k in POSTPROCESS_DEFAULTS}


def add_predict_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """05_predict.py's flags (named as the fields of :class:`lib.predict.PredictSettings`, :func:`predict_settings`)."""
    g = p.add_argument_group("models and images")
    g.add_argument("--checkpoints", nargs="+", required=True,
                   help="checkpoint files or training out-dirs (an out-dir means its best.pth, else checkpoint.pth)")
    g.add_argument("--names", nargs="+", default=None, help="model names (default: each checkpoint's out-dir name)")
    g.add_argument("--data-dir", type=Path, default=Path("data/synthetic"),
                   help="Kaggle-layout dir: predicts its test images (sample_submission.csv order)")
    g.add_argument("--prepared-dir", type=Path, default=None,
                   help="a prepared set: predict one split of it instead (--split) and write gt.csv")
    g.add_argument("--split", choices=["val", "train"], default="val", help="prepared split with --prepared-dir")
    g.add_argument("--images", default=None, metavar="DIR_OR_GLOB",
                   help="predict any images instead: a folder (its .jpg/.jpeg/.png files) or a glob pattern "
                        "(quote it; ** recurses); writes overlays/ and coco_results.json too")
    g.add_argument("--limit", type=int, default=0, help="predict only the first N images (quick runs); 0 = all")
    g.add_argument("--out-dir", type=Path, default=Path("work/predictions"), help="output directory")
    g = p.add_argument_group("inference")
    g.add_argument("--batch-size", type=int, default=4, help="images per forward pass (per process)")
    g.add_argument("--workers", type=int, default=4, help="DataLoader workers decoding + resizing images")
    g.add_argument("--input-long-side", type=int, default=0,
                   help="shrink images to this long side before the model (0 = the largest model max_size "
                        "x the largest TTA scale; images are never upscaled)")
    g.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], default="auto",
                   help="autocast: auto = bf16 on GPUs with native bf16 (A100, H100), fp16 on older GPUs (T4, V100, "
                        "P100), off on CPU")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto = cuda if available")
    g.add_argument("--channels-last", action="store_true",
                   help="run the models in channels-last (NHWC) layout (bench/infer_bench.py measures it)")
    g.add_argument("--threads", type=int, default=0, help="torch.set_num_threads on CPU; 0 = torch's default")
    g = p.add_argument_group("test-time augmentation")
    g.add_argument("--tta-flip", action="store_true", help="add horizontally flipped views (mapped back)")
    g.add_argument("--tta-scales", type=float, nargs="+", default=[1.0],
                   help="view scales, e.g. 0.8 1.0 1.2 (multiply the model's resize sizes)")
    g.add_argument("--tta-iou", type=float, default=0.5, help="mask IoU at which instances of two views fuse")
    g = p.add_argument_group("storage")
    g.add_argument("--mask-size", type=int, default=512,
                   help="store masks at N x N (resized from the original frame, aspect not kept); 0 = original size "
                        "(with TTA each view's masks wait on the device as uint8 until fused: about 0.6 GB per view "
                        "and image at 100 detections of a 3000x2000 image, so lower --batch-size)")
    g.add_argument("--score-floor", type=float, default=0.05,
                   help="drop instances scoring below this (06 applies the real threshold)")
    g.add_argument("--shard-size", type=int, default=100,
                   help="write a resumable shard every N images (rounded up to a multiple of --batch-size)")
    g.add_argument("--stop-after", type=int, default=0,
                   help="stop this run after N images per process (split a long run; rerun to continue); 0 = no")
    g.add_argument("--restart", action="store_true",
                   help="delete shards / results of an earlier run in --out-dir and predict from scratch")
    g.add_argument("--keep-shards", action="store_true", help="keep out_dir/shards after merging")
    g = p.add_argument_group("export (default: on with --images, off otherwise)")
    g.add_argument("--overlays", action=argparse.BooleanOptionalAction, default=None,
                   help="write overlays/<image>.png: each image with its post-processed masks, class names, scores")
    g.add_argument("--coco-results", action=argparse.BooleanOptionalAction, default=None,
                   help="write coco_results.json: the post-processed instances in COCO results format")
    g.add_argument("--params", type=Path, default=None,
                   help="06's params.json for the exported instances: thresholds and the combination of several "
                        "models (default: the winning recipe, all models fused with equal weights); a rerun with "
                        "another params file (or other content) exports again")
    g.add_argument("--coco-gt", type=Path, default=None, metavar="FILE",
                   help="a COCO-format ground-truth file of these images (e.g. Fashionpedia's "
                        "instances_attributes_val2020.json): coco_results.json then uses its image ids (matched by "
                        "file name; an image not in the file is an error) and its category ids (by name), so "
                        "pycocotools' COCO(FILE).loadRes takes it (default: images numbered 1..N, category ids "
                        "0-45); turns --coco-results on")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def predict_settings(args):
    """05's parsed flags as :class:`lib.predict.PredictSettings`."""
    from dataclasses import fields

    from .predict import PredictSettings

    names = {f.name for f in fields(PredictSettings)} - {"progress"}
    return PredictSettings(**{k: getattr(args, k) for k in names}, progress=not args.no_progress)


def train_settings(args):
    """A training script's parsed flags as :class:`lib.engine.TrainSettings` (every flag kept in ``record``)."""
    from dataclasses import fields

    from .engine import TrainSettings

    names = {f.name for f in fields(TrainSettings)} - {"record"}
    return TrainSettings(**{k: getattr(args, k) for k in names}, record=args_dict(args))


def submission_settings(args):
    """06's parsed flags as :class:`lib.make_submission.SubmissionSettings`."""
    from .make_submission import SubmissionSettings, parse_grid

    return SubmissionSettings(
        predictions=list(args.predictions), models=args.models, ensemble_weights=args.ensemble_weights,
        ensemble_iou=args.ensemble_iou, min_votes=args.min_votes, data_dir=Path(args.data_dir),
        out_dir=Path(args.out_dir), mask_size=args.mask_size, params=Path(args.params) if args.params else None,
        postprocess=postprocess_overrides(args), gt=Path(args.gt) if args.gt else None, score=not args.no_score,
        tune=args.tune, tune_on=args.tune_on, tune_grid=parse_grid(args.tune_grid),
        tune_drop_categories=args.tune_drop_categories, weight_choices=list(args.weight_choices),
        max_models=args.max_models, refine=args.refine, report_images=args.report_images, processes=args.processes,
        progress=not args.no_progress, record=args_dict(args))


def add_prepare_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """01_prepare_data.py's flags: the sources (Kaggle layout, COCO files, the synthetic generator), the
    prepared set's size and split, processes."""
    p.add_argument("--data-dir", default=None,
                   help="Kaggle-layout input directory (default: data/synthetic, unless --coco-json alone is given)")
    p.add_argument("--out-dir", default="work/prepared", help="prepared-set directory to write")
    p.add_argument("--train-csv", default=None, help="train.csv to read (default: <data-dir>/train.csv)")
    p.add_argument("--image-dir", default=None, help="training images (default: <data-dir>/train)")
    p.add_argument("--labels", default=None, help="label file (default: <data-dir>/label_descriptions.json)")
    p.add_argument("--coco-json", nargs="+", default=[], metavar="FILE",
                   help="COCO-format instance files (Fashionpedia's instances_attributes_*2020.json) to prepare too, "
                        "categories and attributes mapped by name; an ImageId already in an earlier source is "
                        "prepared once")
    p.add_argument("--coco-images", nargs="+", default=[], metavar="DIR",
                   help="the image folder of each --coco-json file (default: the file's folder)")
    p.add_argument("--long-side", type=int, default=1024, help="resize images so the long side is this (0 = keep)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="fraction of images in the val split")
    p.add_argument("--seed", type=int, default=0, help="seed of the split")
    p.add_argument("--processes", type=int, default=0, help="processes preparing images in parallel (0 = all cores)")
    p.add_argument("--limit", type=int, default=None, help="prepare only the first N images (quick runs)")
    p.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality of the cached images")
    p.add_argument("--strict", action="store_true", help="exit with status 1 if any row or image was skipped")
    p.add_argument("--keep-duplicate-files", action="store_true",
                   help="prepare every ImageId even when its file has the same bytes as another's (by default "
                        "such an image is prepared once and the others reported)")
    g = p.add_argument_group("synthetic data (offline default)")
    g.add_argument("--synthetic", action="store_true",
                   help="first generate the synthetic Kaggle-layout dataset into --data-dir (reused if it is there)")
    g.add_argument("--synthetic-train", type=int, default=48, help="synthetic training images")
    g.add_argument("--synthetic-test", type=int, default=12, help="synthetic test images")
    g.add_argument("--synthetic-seed", type=int, default=0, help="synthetic generator seed")
    g.add_argument("--synthetic-max-side", type=int, default=768, help="long side of the largest synthetic image")
    g.add_argument("--synthetic-min-side", type=int, default=256, help="long side of the smallest synthetic image")
    g.add_argument("--synthetic-preset", choices=("realistic", "demo"), default="realistic",
                   help="how hard the synthetic images are: 'realistic' (1-3 figures, all 46 categories, cluttered "
                        "backgrounds) or 'demo' (one figure in a few big garments on a plain background; "
                        "see lib.synthetic.PRESETS); a set generated with another preset is regenerated")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p
