"""Benchmark: our training step (02/03/04) vs the stock torchvision / smp step, same batch, size, precision.

Both sides train on the same fixed random batch already on the device (box-shaped instance masks, see
``bench/common.py`` ``random_batch``), under the same autocast (bf16 on CUDA, fp32 on the CPU):

- ``maskrcnn`` / ``deepmac``: ours = ``lib.models.build_model`` (the 03 / 04 config with the chosen backbone
  and ``min_size = max_size = size``), ``lib.engine.build_optimizer`` with the scripts' defaults (AdamW
  1e-4, fused on CUDA) and the step of ``lib/engine.py`` (host reads of the losses, finiteness check,
  ``clip_grad_norm_`` at 10); stock = torchvision's ``maskrcnn_resnet50_fpn`` (or ``MaskRCNN`` on
  ``resnet_fpn_backbone`` for resnet18/34) from random weights, plain ``torch.optim.SGD`` (lr 0.01,
  momentum 0.9) and the reference step (forward, sum, backward, step). DeepMAC is compared with the same
  stock Mask R-CNN.
- ``unet``: ours = the 02 model (``lib/models/unet.py``: resize transform, semantic target from the
  instance masks, CE + Dice) with AdamW 3e-4 and the engine step (clip 5); stock = smp ``Unet`` on a ready
  ``(B, 3, S, S)`` tensor with a ready class map, plain CE and non-fused AdamW.

Stock and ours are timed in turns, one step each (after ``--warmup`` rounds), and each side's images/s comes
from its median step time, so load changes on a shared machine hit both alike (on a shared CPU, run with
``OMP_NUM_THREADS=1``: two-thread kernels stalled by other processes made steps 5x slower and erratic).
The CPU mode samples fewer RoIs on both sides (demo.sh's settings) and gives DeepMAC demo.sh's small head.
``ratio`` = ours images/s / stock images/s (> 1: ours is faster). With ``--channels-last`` (default in GPU
mode) a third side, timed in the same turns, runs our step with the model in channels-last layout (the
scripts' ``--channels-last``): ``ours_cl_img_s`` and ``cl_ratio`` (= it / stock). On CUDA the host-device synchronisations
of one step are counted too (``torch.cuda.set_sync_debug_mode``); ``--profile`` prints where the time of
our step goes (``torch.profiler``).

Examples::

    OMP_NUM_THREADS=1 python bench/train_bench.py --cpu        # tiny CPU mode: resnet18 at 128 px, batch 2
    python bench/train_bench.py --cpu --archs maskrcnn --profile
    python bench/train_bench.py --out work/bench/train.json    # GPU: R50-FPN 1024 px x 8, UNet R34 512 px x 32
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench import common as bc  # noqa: E402

ARCHS = ("maskrcnn", "deepmac", "unet")
MODES = {
    # CPU: the light RoI settings of demo.sh on both sides (torchvision's defaults sample 512 RoIs per image,
    # ~10 s of mask-head backward per step on two cores).
    "cpu": dict(batch=2, size=128, backbone="resnet18", instances=8, unet_batch=2, unet_size=128,
                encoder="resnet18", steps=3, warmup=1, channels_last=False,
                detector=dict(rpn_post_nms_top_n_train=300, box_batch_size_per_image=64,
                              rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100, box_detections_per_img=50),
                deepmac=dict(mask_roi_size=16, mask_head_width=32, mask_head_depth=2, mask_head_stacks=1)),
    # GPU: torchvision's default detector settings on both sides.
    "gpu": dict(batch=8, size=1024, backbone="resnet50", instances=8, unet_batch=32, unet_size=512,
                encoder="resnet34", steps=15, warmup=5, channels_last=True, detector={}, deepmac={}),
}
# The training scripts' optimiser defaults (02_train_unet.py, 03_train_maskrcnn.py, 04_train_deepmac.py).
OURS_OPT = {"maskrcnn": dict(optimizer="adamw", lr=1e-4, clip=10.0),
            "deepmac": dict(optimizer="adamw", lr=1e-4, clip=10.0),
            "unet": dict(optimizer="adamw", lr=3e-4, clip=5.0)}


def stock_detector(backbone: str, size: int, num_classes: int = 47, **kwargs) -> torch.nn.Module:
    """torchvision's own Mask R-CNN from random weights, resizing to ``size`` (no changes of ours);
    ``kwargs``: ``MaskRCNN`` settings (``rpn_post_nms_top_n_train``, ``box_batch_size_per_image``, ...)."""
    from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    if backbone == "resnet50":
        return maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes,
                                     min_size=size, max_size=size, **kwargs)
    if backbone not in ("resnet18", "resnet34"):
        raise ValueError(f"stock baseline for backbone {backbone!r}: choose resnet18, resnet34 or resnet50")
    # trainable BatchNorm, as torchvision's maskrcnn_resnet50_fpn itself uses when it gets no weights
    backbone_net = resnet_fpn_backbone(backbone_name=backbone, weights=None, trainable_layers=5,
                                       norm_layer=torch.nn.BatchNorm2d)
    return MaskRCNN(backbone_net, num_classes=num_classes, min_size=size, max_size=size, **kwargs)


def ours_model(arch: str, cfg: dict) -> torch.nn.Module:
    """Our 02/03/04 model at the benchmark's size (random weights)."""
    from lib import models as lmodels

    if arch == "unet":
        conf = lmodels.default_config("unet", encoder=cfg["encoder"], min_size=cfg["unet_size"],
                                      max_size=cfg["unet_size"])
    else:
        extra = dict(cfg.get("detector", {}), **(cfg.get("deepmac", {}) if arch == "deepmac" else {}))
        conf = lmodels.default_config(arch, backbone=cfg["backbone"], min_size=cfg["size"], max_size=cfg["size"],
                                      **extra)
    return lmodels.build_model(conf)


def ours_optimizer(arch: str, model, device):
    from lib.engine import build_optimizer

    o = OURS_OPT[arch]
    return build_optimizer(model, o["optimizer"], o["lr"], weight_decay=1e-4, momentum=0.9, device=device)


class StockUnetStep(torch.nn.Module):
    """The stock smp training step as a loss-dict module: plain CE of ``net(x)`` against a ready class map."""

    def __init__(self, net, x, y):
        super().__init__()
        self.net, self.x, self.y = net, x, y

    def forward(self, images=None, targets=None):
        return {"ce": torch.nn.functional.cross_entropy(self.net(self.x), self.y)}


def measure_arch(arch: str, cfg: dict, device, dtype, profile: bool = False) -> dict:
    """One row: stock and ours images/s (median step, the two timed in turns) and syncs per step on CUDA."""
    row = {"arch": arch}
    clip = OURS_OPT[arch]["clip"]

    def ours_step(model, images, targets, optimizer, dtype):
        return bc.engine_step(model, images, targets, optimizer, dtype, clip_grad=clip)

    if arch == "unet":
        import segmentation_models_pytorch as smp

        bs, size = cfg["unet_batch"], cfg["unet_size"]
        images, targets = bc.random_batch(bs, size, cfg["instances"], device, seed=1)
        torch.manual_seed(0)
        net = smp.Unet(cfg["encoder"], encoder_weights=None, classes=47).to(device)
        x = torch.stack(images)
        y = torch.randint(0, 47, (bs, size, size), device=device)
        stock = StockUnetStep(net, x, y)
        stock_opt = torch.optim.AdamW(net.parameters(), lr=3e-4)
        row.update(batch=bs, size=size, model=f"smp Unet({cfg['encoder']})")
    else:
        bs, size = cfg["batch"], cfg["size"]
        images, targets = bc.random_batch(bs, size, cfg["instances"], device)
        torch.manual_seed(0)
        stock = stock_detector(cfg["backbone"], size, **cfg.get("detector", {})).to(device)
        stock_opt = torch.optim.SGD(stock.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        row.update(batch=bs, size=size, model=f"Mask R-CNN {cfg['backbone']}-FPN")
    torch.manual_seed(0)
    model = ours_model(arch, cfg).to(device)
    opt = ours_optimizer(arch, model, device)
    stock.train()
    model.train()
    sides = {"stock": lambda: bc.stock_step(stock, images, targets, stock_opt, dtype),
             "ours": lambda: ours_step(model, images, targets, opt, dtype)}
    if cfg.get("channels_last"):  # the scripts' --channels-last: the same model in NHWC layout
        torch.manual_seed(0)
        model_cl = ours_model(arch, cfg).to(device).to(memory_format=torch.channels_last).train()
        opt_cl = ours_optimizer(arch, model_cl, device)
        sides["ours_cl"] = lambda: ours_step(model_cl, images, targets, opt_cl, dtype)
    t = bc.time_interleaved(sides, device, cfg["steps"], cfg["warmup"])
    if "ours_cl" in t:
        row.update(ours_cl_img_s=bs / t["ours_cl"], cl_ratio=t["stock"] / t["ours_cl"])
    row.update(stock_img_s=bs / t["stock"], ours_img_s=bs / t["ours"], ratio=t["stock"] / t["ours"],
               stock_syncs_per_step=bc.count_syncs(lambda: bc.stock_step(stock, images, targets, stock_opt, dtype),
                                                   device),
               ours_syncs_per_step=bc.count_syncs(lambda: ours_step(model, images, targets, opt, dtype), device))
    if profile:
        row["profile"] = bc.profile_table(lambda: ours_step(model, images, targets, opt, dtype), device)
    return row


def run(cfg: dict, device, dtype, archs=ARCHS, profile: bool = False) -> dict:
    """Measure every arch in ``archs``; errors are recorded per arch so the others still run."""
    rows = []
    for arch in archs:
        t0 = time.time()
        try:
            row = measure_arch(arch, cfg, device, dtype, profile)
        except Exception as e:  # keep measuring the rest
            row = {"arch": arch, "error": f"{type(e).__name__}: {e}"}
        row["seconds"] = round(time.time() - t0, 1)
        if device.type == "cuda":
            row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.empty_cache()
        rows.append(row)
        print(f"  {arch:<9} stock {bc.fmt(row.get('stock_img_s'))} img/s, ours {bc.fmt(row.get('ours_img_s'))} "
              f"img/s, ratio {bc.fmt(row.get('ratio'))}{'  ' + row['error'] if 'error' in row else ''}", flush=True)
    return {"rows": rows, **{f"{r['arch']}_train_ratio": r.get("ratio") for r in rows}}


COLUMNS = [("arch", "arch"), ("model", "stock model"), ("batch", "batch"), ("size", "size"),
           ("stock_img_s", "stock img/s"), ("ours_img_s", "ours img/s"), ("ratio", "ours/stock"),
           ("ours_cl_img_s", "ours channels-last img/s"), ("cl_ratio", "channels-last/stock"),
           ("stock_syncs_per_step", "stock syncs/step"), ("ours_syncs_per_step", "ours syncs/step")]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--cpu", action="store_true", help="small CPU mode (default: GPU mode, needs CUDA)")
    p.add_argument("--archs", nargs="+", choices=ARCHS, default=list(ARCHS), help="models to measure")
    p.add_argument("--batch-size", type=int, default=None, help="detector batch (default: the mode's)")
    p.add_argument("--size", type=int, default=None, help="detector image size (default: the mode's)")
    p.add_argument("--backbone", choices=["resnet18", "resnet34", "resnet50"], default=None,
                   help="detector backbone (default: resnet18 on CPU, resnet50 on GPU)")
    p.add_argument("--unet-batch-size", type=int, default=None, help="UNet batch (default: the mode's)")
    p.add_argument("--unet-size", type=int, default=None, help="UNet image size (default: the mode's)")
    p.add_argument("--instances", type=int, default=None, help="instances per image (default 8)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per model (default: the mode's)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: the mode's)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="also time our step with the model in channels-last layout (the scripts' --channels-last; "
                        "default: on in GPU mode, off in CPU mode)")
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table of our step per arch")
    p.add_argument("--out", type=Path, default=Path("work/bench/train_bench.json"), help="JSON file to write")
    return p


def config_from_args(args) -> dict:
    return bc.mode_config(MODES, args, {"batch": "batch_size", "size": "size", "backbone": "backbone",
                                        "unet_batch": "unet_batch_size", "unet_size": "unet_size",
                                        "instances": "instances", "steps": "steps", "warmup": "warmup",
                                        "channels_last": "channels_last"})


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)
    device = bc.pick_device(args.cpu)
    dtype = bc.bench_dtype(device)
    cfg = config_from_args(args)
    print(f"train step, {'CPU' if args.cpu else 'GPU'} mode: {cfg}", flush=True)
    res = run(cfg, device, dtype, args.archs, args.profile)
    report = {**bc.report_header("train_step", args.cpu, device, dtype, cfg), **res}
    for r in res["rows"]:
        if "profile" in r:
            print(f"\n{r['arch']}: our step, torch.profiler\n{r['profile']}")
    print()
    print(bc.table(res["rows"], COLUMNS))
    bc.write_json(args.out, report)
    print(f"\nwrote {args.out}")
    return report


if __name__ == "__main__":
    main()
