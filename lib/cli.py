"""The command line of the six scripts: one help formatter and parser shape, settings dataclasses from parsed
flags, and the flags the three training scripts (02/03/04) share.

Each script builds its own parser (:func:`script_parser`: the docstring's first paragraph is the description,
the rest, with the examples, the epilog). A stage's defaults have one home, its settings dataclass
(``lib.prepared.PrepareSettings``, ``lib.engine.TrainSettings``, ``lib.predict.PredictSettings``,
``lib.make_submission.SubmissionSettings``): the parser reads them with :func:`field_defaults`, flags are named as
the fields, and :func:`settings_of` builds the dataclass from the parsed flags. :func:`add_training_args` (data,
optimisation, logging, checkpoints, augmentation, starting weights) and :func:`add_detector_args` (03/04's model
flags) build the training parsers; :func:`detector_overrides` turns the model flags into ``lib.models`` config
keys (``None`` = the model's default). This is the one module that reads argparse Namespaces.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import os
import re
from pathlib import Path

from . import files as lfiles


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Every script's ``--help``: the description and epilog as written (the examples keep their lines), and each
    flag's default said once: argparse's ``(default: X)`` is added only where the help text does not already say
    what the default is (``(default: <data-dir>/train.csv)``) and the default is a value (not None, False or an
    empty list: a flag that is off or left to another rule)."""

    def _get_help_string(self, action):
        text = action.help or ""
        d = action.default
        if re.search(r"\bdefault\b", text, re.IGNORECASE) or d is None or d is False or (
                isinstance(d, (list, tuple)) and not d):
            return text
        return super()._get_help_string(action)


def script_parser(doc: str) -> argparse.ArgumentParser:
    """A script's parser: its module docstring's first paragraph is the description, the rest (what it reads and
    writes, the examples) the epilog; :class:`HelpFormatter`."""
    head, _, rest = doc.strip().partition("\n\n")
    return argparse.ArgumentParser(description=head, epilog=rest or None, formatter_class=HelpFormatter)


def raised_by_project(error: BaseException) -> bool:
    """True when ``error`` was raised by this project's own code, whose messages name the file, row or flag at
    fault (a script prints them as one line); False when it comes from inside a library (numpy, pandas,
    torch, ...): a bug, to be shown with its traceback."""
    tb, last = error.__traceback__, None
    while tb is not None:
        last, tb = tb.tb_frame.f_code.co_filename, tb.tb_next
    if last is None:
        return False
    root = Path(__file__).resolve().parents[1]
    return Path(last).resolve().is_relative_to(root) and "site-packages" not in last


@contextlib.contextmanager
def bad_input_exits(stage: str):
    """Around a script's work: bad input (a ValueError or FileNotFoundError raised by this project's code, whose
    message names the file, row or flag at fault) ends the script with the one line ``<stage>: error: <message>``
    (exit status 1); one raised inside a library is a bug and keeps its traceback (``IMAT_TRACEBACK=1``: always)."""
    try:
        yield
    except (ValueError, FileNotFoundError) as e:
        if os.environ.get("IMAT_TRACEBACK") or not raised_by_project(e):
            raise
        raise SystemExit(f"{stage}: error: {e}") from None


def field_defaults(settings_class) -> dict:
    """``{field: default}`` of a settings dataclass (a ``default_factory`` called); fields without a default are
    left out. The parsers take their defaults from here, so each default is written once."""
    out = {}
    for f in dataclasses.fields(settings_class):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def parameter_defaults(function) -> dict:
    """``{parameter: default}`` of a function's keyword parameters (flags that pass straight to it take these)."""
    return {k: p.default for k, p in inspect.signature(function).parameters.items()
            if p.default is not inspect.Parameter.empty}


def settings_of(settings_class, args, **given):
    """``settings_class`` built from the parsed flags named as its fields; ``given`` sets the others (fields that
    are neither flags nor given keep their defaults)."""
    names = {f.name for f in dataclasses.fields(settings_class)} - set(given)
    return settings_class(**{k: getattr(args, k) for k in sorted(names) if hasattr(args, k)}, **given)


def _train_settings_class():
    from .engine import TrainSettings  # lib.engine imports nothing from here; imported late to keep it that way

    return TrainSettings


def train_settings(args):
    """A training script's parsed flags as :class:`lib.engine.TrainSettings` (every flag kept in ``record``)."""
    return settings_of(_train_settings_class(), args, record=args_dict(args))


def add_training_args(parser: argparse.ArgumentParser, out_dir: str, **defaults) -> argparse.ArgumentParser:
    """Add the flags shared by the training scripts, with the defaults of :class:`lib.engine.TrainSettings`;
    ``defaults`` are the script's own (e.g. ``lr=3e-4``), each a field of it."""
    d = field_defaults(_train_settings_class())
    unknown = set(defaults) - set(d)
    if unknown:
        raise ValueError(f"add_training_args: unknown defaults {sorted(unknown)}")
    d.update(defaults)
    _add_data_args(parser, d, out_dir)
    _add_optimisation_args(parser, d)
    _add_logging_args(parser, d)
    _add_augmentation_args(parser, d)
    _add_weights_args(parser, d)
    return parser


def _add_data_args(parser: argparse.ArgumentParser, d: dict, out_dir: str) -> None:
    """Data and output flags of :func:`add_training_args` (``d``: their defaults)."""
    g = parser.add_argument_group("data and output")
    g.add_argument("--prepared-dir", type=Path, default=Path("work/prepared"),
                   help="01_prepare_data.py output (the prepared set)")
    g.add_argument("--out-dir", type=Path, default=Path(out_dir), help="where checkpoints, logs and plots go")
    g.add_argument("--workers", type=int, default=d["workers"], help="DataLoader worker processes per rank")
    g.add_argument("--max-steps-per-epoch", type=int, default=d["max_steps_per_epoch"],
                   help="cap steps per epoch (quick runs); 0 = all")
    g.add_argument("--max-val-images", type=int, default=d["max_val_images"],
                   help="validate on the first N val images; 0 = all")
    g.add_argument("--aspect-ratio-group-factor", type=int, default=d["aspect_ratio_group_factor"],
                   help="batch images of similar aspect ratio (2k+1 log-spaced bins, as torchvision's references) "
                        "so a batch pads less; 0 = plain shuffled batches")


def _add_optimisation_args(parser: argparse.ArgumentParser, d: dict) -> None:
    """Optimisation flags: optimizer, schedule, accumulation, EMA, precision, devices of :func:`add_training_args` (``d``: their defaults)."""
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
    g.add_argument("--lr-milestones", type=str, default=d["lr_milestones"],
                   help="epochs where the step schedule decays, e.g. '8,11' (default: 2/3 and 8/9 of --epochs)")
    g.add_argument("--lr-gamma", type=float, default=d["lr_gamma"], help="step schedule decay factor")
    g.add_argument("--clip-grad", type=float, default=d["clip_grad"], help="max gradient norm; 0 = no clipping")
    g.add_argument("--accumulate", type=int, default=d["accumulate"], metavar="N",
                   help="gradient accumulation: each optimizer step sums the gradients of N batches (each loss / N), "
                        "so a 16 GB GPU reaches a recipe's batch: batch x N x GPUs images per step; --epochs, "
                        "--warmup-steps and the schedule count optimizer steps")
    g.add_argument("--lr-scale", choices=["none", "linear"], default=d["lr_scale"],
                   help="linear: the learning rate is --lr x (GPUs x --batch-size x --accumulate) / --lr-base-batch "
                        "(the linear scaling rule; meta.json records the result)")
    g.add_argument("--lr-base-batch", type=int, default=d["lr_base_batch"],
                   help="the images per optimizer step --lr is given for, with --lr-scale linear")
    g.add_argument("--ema-decay", type=float, default=d["ema_decay"],
                   help="keep an exponential moving average of the weights (e.g. 0.999; 0 = off): validation, "
                        "best.pth's choice and 05 use it; the checkpoint keeps both")
    g.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], default=d["amp"],
                   help="mixed precision: auto = bf16 autocast on GPUs with native bf16 (A100, H100), fp16 with a "
                        "gradient scaler on older GPUs (T4, V100, P100), off on CPU")
    g.add_argument("--channels-last", action="store_true",
                   help="keep the model's 4-D weights (and so its conv activations) in channels-last (NHWC) "
                        "layout: often faster for convolutions on tensor-core GPUs; bench/train_bench.py measures "
                        "it against the default layout")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default=d["device"], help="auto = cuda if available")
    g.add_argument("--seed", type=int, default=d["seed"], help="seed for weights, data order and augmentation")
    g.add_argument("--threads", type=int, default=d["threads"],
                   help="torch.set_num_threads on CPU; 0 = torch's default")
    g.add_argument("--sync-bn", action="store_true",
                   help="with several CUDA processes: SyncBatchNorm (BatchNorm statistics over the global batch)")
    g.add_argument("--ddp-find-unused", action=argparse.BooleanOptionalAction, default=d["ddp_find_unused"],
                   help="DDP find_unused_parameters (an extra graph walk every step; not needed by these models: "
                        "every trainable parameter gets a gradient, also in batches without instances or without "
                        "--mask-categories instances, tests/test_models.py)")


def _add_logging_args(parser: argparse.ArgumentParser, d: dict) -> None:
    """Logging, validation and checkpoint flags of :func:`add_training_args` (``d``: their defaults)."""
    g = parser.add_argument_group("logging, validation, checkpoints")
    g.add_argument("--log-every", type=int, default=d["log_every"], help="write a train record every N steps")
    g.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=d["tensorboard"],
                   help="also write TensorBoard event files to OUT_DIR/tensorboard (tensorboard --logdir work)")
    g.add_argument("--val-every", type=int, default=d["val_every"],
                   help="validate every N epochs (and after the last); 0 = never")
    g.add_argument("--val-score-thresh", type=float, default=d["val_score_thresh"],
                   help="detections below this score are dropped for the Kaggle metric (COCO AP uses all)")
    g.add_argument("--checkpoint-every-steps", type=int, default=d["checkpoint_every_steps"],
                   help="also save checkpoint.pth every N steps (mid-epoch resume); 0 = only at epoch ends")
    g.add_argument("--stop-after-epoch", type=int, default=d["stop_after_epoch"],
                   help="stop after this epoch (to split a run into jobs; continue with --resume auto); 0 = no")
    g.add_argument("--resume", type=str, default=d["resume"],
                   help="checkpoint to continue from, or 'auto' = OUT_DIR/checkpoint.pth if it exists")
    g.add_argument("--keep-epochs", type=int, nargs="+", default=d["keep_epochs"], metavar="EPOCH",
                   help="also keep the checkpoints of these epochs as OUT_DIR/model_<epoch>.pth (torchvision's "
                        "references' name), e.g. 8 10 12 for a checkpoint ensemble (05 --checkpoints takes them)")


def _add_augmentation_args(parser: argparse.ArgumentParser, d: dict) -> None:
    """Augmentation flags and the categories that get masks of :func:`add_training_args` (``d``: their defaults)."""
    g = parser.add_argument_group("augmentation and model")
    g.add_argument("--scale-range", type=float, nargs=2, default=d["scale_range"], metavar=("LO", "HI"),
                   help="multi-scale training: each image's resize sizes (--min-size/--max-size or --image-size) "
                        "times U(LO, HI), e.g. 0.6 1.0; values > 8 are short-side pixels (divided by the min size)")
    g.add_argument("--no-hflip", action="store_true", help="disable random horizontal flips")
    g.add_argument("--color-jitter", type=float, default=d["color_jitter"],
                   help="brightness/contrast/saturation jitter; 0 = off")
    g.add_argument("--lsj", type=int, default=d["lsj"], metavar="SIZE",
                   help="large-scale jitter (Ghiasi et al. 2021, detectron2's LSJ configs) instead of --scale-range: "
                        "each training image scaled to fit SIZE x SIZE times U(0.1, 2.0), then randomly cropped or "
                        "padded (mean colour) to SIZE x SIZE with its instances; 0 = off. The model's own resize is "
                        "set to keep SIZE x SIZE images (its min and max size = SIZE, so test images get long side "
                        "SIZE, as in detectron2's LSJ configs); a different --min-size/--max-size (02: --image-size) "
                        "is an error. E.g. 1024")
    g.add_argument("--copy-paste", type=float, default=d["copy_paste"], metavar="P",
                   help="simple copy-paste (Ghiasi et al. 2021): with probability P per training image, a random "
                        "subset of another image's instances in the batch is pasted on it at the same pixel positions "
                        "(top-left aligned; with --lsj all images are SIZE x SIZE, as in the paper); covered masks "
                        "are cut (one left with under 16 pixels is dropped), boxes follow the masks, pasted "
                        "instances keep their labels and attributes. Needs --batch-size >= 2; 0 = off")
    g.add_argument("--mask-categories", "--mask-classes", type=str, default=d["mask_categories"],
                   help="categories that get masks, e.g. 'garments', 'parts', '0-26,31' (default: all; "
                        "--mask-classes is its older name)")


def _add_weights_args(parser: argparse.ArgumentParser, d: dict) -> None:
    """Starting-weight flags of :func:`add_training_args` (``d``: their defaults)."""
    g = parser.add_argument_group("starting weights (lib/weights.py; default: random)")
    g.add_argument("--weights-backbone", type=str, default=d["weights_backbone"], metavar="imagenet|PATH",
                   help="ImageNet weights for the detector backbone / UNet encoder: 'imagenet' = torchvision's "
                        "file from the torch cache (else downloaded), or a local file such as "
                        "resnet50-0676ba61.pth; detectors then freeze BatchNorm (--trainable-backbone-layers)")
    g.add_argument("--pretrained", dest="weights_backbone", action="store_const", const="imagenet",
                   help="alias of --weights-backbone imagenet")
    g.add_argument("--weights", type=str, default=d["weights"], metavar="coco|PATH",
                   help="the whole model: 'coco' = torchvision's COCO Mask R-CNN (03/04, resnet50 or resnet50_v2; "
                        "the class-count layers start fresh, DeepMAC keeps its own mask head), a local copy of that "
                        "file, or a checkpoint of ours of the same arch (fine-tuning; its model config is kept)")


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
    g.add_argument("--rpn-batch-size-per-image", type=int, default=None,
                   help="anchors sampled per image for the RPN loss")
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
    g.add_argument("--attr-refit-steps", type=int, default=field_defaults(_train_settings_class())["attr_refit_steps"],
                   help="with --attr-head: after training, refit the attribute head of best.pth alone on the frozen "
                        "model's features at the train split's ground-truth boxes, this many steps of 128 instances "
                        "(lib/attribute_refit.py; default: 400 with --attr-head; 0 = no refit; bench/RESULTS.md "
                        "measures it)")
    g.add_argument("--attr-prior", action=argparse.BooleanOptionalAction, default=None,
                   help="with --attr-head: per-category attribute logits added to the head's, started at the train "
                        "split's per-category attribute frequencies, so the head starts as the per-category prior "
                        "(default: on with --attr-head; bench/RESULTS.md measures it)")
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
         "attr_loss_weight": getattr(args, "attr_loss_weight", None),
         "attr_prior": (args.attr_prior is not False) if getattr(args, "attr_head", False) else None}
    if hasattr(args, "mask_head_depth"):
        o.update({"mask_head_depth": args.mask_head_depth, "mask_head_width": args.mask_head_width,
                  "mask_head_stacks": args.mask_head_stacks, "gt_box_jitter": args.gt_box_jitter,
                  "mask_max_instances": args.mask_max_instances,
                  "class_agnostic_masks": False if args.class_specific_masks else None})
    elif getattr(args, "class_agnostic_masks", False):
        o["class_agnostic_masks"] = True
    return {k: v for k, v in o.items() if v is not None}


def args_dict(args) -> dict:
    """``vars(args)`` with Paths/tuples made JSON-safe."""
    return lfiles.json_safe(vars(args))
