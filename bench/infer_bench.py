"""Benchmark: 05's prediction path (TTA, post-processing, stored masks) and 06 (submission + RLE) vs the stock
model forward, and the projected 05 + 06 time for the 3,200 test images.

Inputs are synthetic test-size JPEGs (``--test-size``, default 3000 x 2000 as the competition's test images,
``lib.synthetic`` scenes) decoded and shrunk to the model size by ``lib.tta.ImageDataset`` as 05 does.
Models have random weights, so their scores mean nothing: to load the post-processing as a trained model
would, every model keeps ``--detections`` instances per image (``box_score_thresh = 0`` and
``score_floor = 0``; the UNet keeps up to that many components) and 06 sees the scores spread uniformly over
0.05..1 (so its default score threshold 0.5 keeps about half). Per arch:

- ``stock_img_s``: the stock model's eval forward (torchvision ``maskrcnn_resnet50_fpn`` / ``MaskRCNN`` on the
  same backbone with the same sizes and detection count, masks pasted at the input size; smp ``Unet`` on the
  batch resized to ``(B, 3, S, S)``, softmax) under ``torch.inference_mode`` and autocast (bf16 on CUDA);
- ``ours_forward_img_s``: our model's plain eval forward, the same way; with ``--channels-last`` (default in
  GPU mode) also ``ours_cl_forward_img_s`` / ``cl_forward_ratio`` (vs stock): the same weights in
  channels-last layout (05 ``--channels-last``), timed in the same turns;
- ``predict_img_s``: ``lib.tta.predict_batch`` (every TTA view: forward, masks to the original frame
  at 512 x 512, view fusion) = 05's main loop;
- ``fusion_device_ms`` / ``fusion_host_ms`` / ``fusion_ratio`` (with TTA): the view fusion per image on the
  model's device as 05 does it vs the host (numpy) fusion it replaced, on the same views, timed in turns;
  ``fusion_ratio`` = host time / device time;
- ``rows_ms``: ``lib.tta.result_rows`` per image (PNG crops; 05 runs it in a thread pool);
- ``decode_ms``: ``ImageDataset`` per image (JPEG decode + shrink; 05 runs it in DataLoader workers);
- ``s06_ms`` = ``s06_build_ms`` + ``s06_validate_ms``: ``lib.submission_file.build_submission`` (default
  post-processing, 512 x 512 RLE) and ``validate_submission`` per image, each in one process.

Mask pasting (``paste``, once per run, no model: ``--paste-detections`` random smooth ``28 x 28`` crops at
boxes of 20-300 px in a ``--paste-image`` (default 768 x 1024) input, on the bench's device): 05's batched
paste straight into the 512 x 512 stored frame (``lib.mask_paste.masks_in_frame``) vs what 05 did before,
torchvision's ``paste_masks_in_image`` at the input size (as the model's ``postprocess`` does) then the
resize to 512 x 512 (``paste_stock_ms`` / ``paste_ours_ms``, ``paste_ratio`` = stock / ours); the same at
the input size for both (``paste_same_size_ratio``: validation's case); ``paste_iou_mean`` / ``paste_iou_min``:
IoU of the two 512 x 512 results binarised at 0.5; on CUDA ``paste_*_syncs``: host syncs per call.

The two forwards are timed in turns (median batch time). Ratios: ``forward_ratio`` = ours forward / stock
forward; ``predict_ratio`` = 05's path / stock forward (with flip TTA the path runs two forwards, so 0.5 is
its ideal); ``end_to_end_ratio`` = 05 + rows + 06 per image, sequential, / stock forward. Projection for
``--project-images`` (3,200): 05 = the slowest of the predict loop, the decode workers (``--workers``) and the
row threads (``--rows-threads``), which overlap; 06 runs after it, its post-processing spread over ``--workers``
processes as ``06_make_submission.py --workers`` does and its validation in one; the sum is compared with the
90 s target.

Examples::

    OMP_NUM_THREADS=1 python bench/infer_bench.py --cpu         # tiny CPU mode (resnet18 at 128 px)
    python bench/infer_bench.py --out work/bench/infer.json     # GPU mode: 1024 px, flip TTA, batch 8
    python bench/infer_bench.py --archs maskrcnn --no-tta-flip  # one model, no TTA
    python bench/infer_bench.py --cpu --archs --paste-detections 100  # the mask paste only
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench import common as bc  # noqa: E402
from bench.train_bench import stock_detector  # noqa: E402

ARCHS = ("maskrcnn", "deepmac", "unet")
MODES = {
    "cpu": dict(backbone="resnet18", size=128, encoder="resnet18", unet_size=128, batch=2, detections=20,
                test_size=(480, 320), unique_images=2, steps=2, warmup=1, workers=1, channels_last=False,
                paste_detections=100, paste_image=(768, 1024),
                detector=dict(rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100),
                deepmac=dict(mask_roi_size=16, mask_head_width=32, mask_head_depth=2, mask_head_stacks=1)),
    "gpu": dict(backbone="resnet50", size=1024, encoder="resnet34", unet_size=1024, batch=8, detections=100,
                test_size=(3000, 2000), unique_images=4, steps=2, warmup=1, workers=8, channels_last=True,
                paste_detections=100, paste_image=(768, 1024),
                detector={}, deepmac={}),
}


# --------------------------------------------------------------------------------------------- inputs
def make_test_images(work_dir: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """``n`` synthetic JPEGs (q90) of ``size = (H, W)`` in ``work_dir`` (kept and reused)."""
    from lib import kaggle_data as lkaggle
    from lib import synthetic

    h, w = int(size[0]), int(size[1])
    work_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = work_dir / f"test_{h}x{w}_{seed}_{i}.jpg"
        if not p.is_file():
            img, _ = synthetic.make_image(np.random.default_rng([seed, 7, i]), h, w)
            lkaggle.write_jpeg(p, img, quality=90)
        paths.append(p)
    return paths


def decode_ms(paths: list[Path], long_side: int, repeat: int = 2) -> float:
    """Milliseconds per image of 05's read + shrink (``lib.tta.ImageDataset``), one process."""
    from lib.tta import ImageDataset

    ds = ImageDataset([str(p) for p in paths], long_side)
    ds[0]
    t0 = time.perf_counter()
    for _ in range(repeat):
        for i in range(len(ds)):
            ds[i]
    return (time.perf_counter() - t0) / (repeat * len(ds)) * 1e3


def load_batch(paths: list[Path], long_side: int, batch: int, device):
    """05's batch: ``batch`` images (cycling over ``paths``) as float 0..1 ``(3, h, w)`` on ``device`` (read and
    shrunk by ``lib.tta.ImageDataset``) and their original ``(H, W)`` sizes."""
    from lib import kaggle_data as lkaggle
    from lib.tta import ImageDataset

    ds = ImageDataset([str(p) for p in paths], long_side)
    sizes = [lkaggle.read_image(p).shape[:2] for p in paths]
    items = [ds[i % len(ds)][1] for i in range(batch)]
    orig = [tuple(map(int, sizes[i % len(paths)])) for i in range(batch)]
    return [im.to(device).float().div_(255) for im in items], orig


# --------------------------------------------------------------------------------------------- models
def ours_model(arch: str, cfg: dict):
    from lib import models as lmodels

    d = int(cfg["detections"])
    if arch == "unet":
        conf = lmodels.default_config("unet", encoder=cfg["encoder"], min_size=cfg["unet_size"],
                                      max_size=cfg["unet_size"], max_instances=d, min_area=1)
    else:
        extra = dict(cfg.get("detector", {}), **(cfg.get("deepmac", {}) if arch == "deepmac" else {}))
        conf = lmodels.default_config(arch, backbone=cfg["backbone"], min_size=cfg["size"], max_size=cfg["size"],
                                      box_score_thresh=0.0, box_detections_per_img=d, **extra)
    return lmodels.build_model(conf)


class StockUnetForward(torch.nn.Module):
    """smp ``Unet`` eval forward on a ready ``(B, 3, S, S)`` tensor (the stock baseline of the UNet)."""

    def __init__(self, encoder: str, size: int):
        super().__init__()
        import segmentation_models_pytorch as smp

        self.net = smp.Unet(encoder, encoder_weights=None, classes=47)
        self.size = size

    def forward(self, images):
        x = torch.stack([torch.nn.functional.interpolate(im[None], size=(self.size, self.size), mode="bilinear",
                                                         align_corners=False)[0] for im in images])
        return self.net(x).softmax(1)


def stock_model(arch: str, cfg: dict):
    if arch == "unet":
        return StockUnetForward(cfg["encoder"], cfg["unet_size"])
    return stock_detector(cfg["backbone"], cfg["size"], box_score_thresh=0.0,
                          box_detections_per_img=int(cfg["detections"]), **cfg.get("detector", {}))


# --------------------------------------------------------------------------------------------- measurement
def measure_arch(arch: str, cfg: dict, paths: list[Path], device, dtype, views, project_images: int,
                 dec_ms: float) -> dict:
    from lib import tta as ltta
    from lib import prediction_table as lpred
    from lib import submission_file as lsub

    size = cfg["unet_size"] if arch == "unet" else cfg["size"]
    long_side = int(round(size * max(s for s, _ in views)))
    images, orig = load_batch(paths, long_side, cfg["batch"], device)
    steps, warm = cfg["steps"], cfg["warmup"]
    row = {"arch": arch, "batch": cfg["batch"], "size": size, "views": len(views),
           "input_hw": list(images[0].shape[-2:]), "decode_ms": dec_ms}

    torch.manual_seed(0)
    stock = stock_model(arch, cfg).to(device).eval()
    torch.manual_seed(0)
    model = ours_model(arch, cfg).to(device).eval()

    def forward(m):
        with torch.inference_mode(), bc.autocast(device, dtype):
            m(images)

    sides = {"stock": lambda: forward(stock), "ours": lambda: forward(model)}
    if cfg.get("channels_last"):  # 05 --channels-last: the same weights in NHWC layout
        import copy

        model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        sides["ours_cl"] = lambda: forward(model_cl)
    t = bc.time_interleaved(sides, device, max(steps, 2), warm)
    row["stock_img_s"], row["ours_forward_img_s"] = len(images) / t["stock"], len(images) / t["ours"]
    if "ours_cl" in t:
        row["ours_cl_forward_img_s"] = len(images) / t["ours_cl"]
        row["cl_forward_ratio"] = t["stock"] / t["ours_cl"]
        del model_cl
    del stock

    results = []

    def predict():
        results[:] = ltta.predict_batch(model, images, orig, views, mask_size=512, score_floor=0.0,
                                        dtype=dtype)

    row["predict_img_s"] = len(images) / bc.time_calls(predict, device, steps, warm)
    row["instances_per_image"] = float(np.mean([len(r["scores"]) for r in results]))
    if len(views) > 1:
        row.update(fusion_ms(model, images[:2], orig[:2], views, device, dtype))
    ids = [f"img{i:04d}.jpg" for i in range(len(images))]
    rows: list[dict] = []

    def make_rows():
        rows[:] = [x for i, r in enumerate(results) for x in ltta.result_rows(ids[i], arch, r, orig[i])]

    row["rows_ms"] = bc.time_calls(make_rows, "cpu", 1, 1) / len(images) * 1e3
    table = lpred.make_table(rows)
    rng = np.random.default_rng(0)
    table["score"] = rng.uniform(0.05, 1.0, len(table)).astype(np.float32)  # random weights score ~1/47
    import pandas as pd

    imgs = pd.DataFrame({"image_id": ids, "orig_height": [o[0] for o in orig], "orig_width": [o[1] for o in orig]})
    subs = []

    def s06_build():
        subs[:] = [lsub.build_submission(table, imgs, mask_size=512, progress=False)]

    def s06_validate():
        problems = lsub.validate_submission(subs[0], ids, mask_size=512)
        if problems:
            raise RuntimeError(f"06 wrote an invalid submission: {problems[:3]}")

    row["s06_build_ms"] = bc.time_calls(s06_build, "cpu", 1, 1) / len(images) * 1e3
    row["s06_validate_ms"] = bc.time_calls(s06_validate, "cpu", 1, 1) / len(images) * 1e3
    row["s06_ms"] = row["s06_build_ms"] + row["s06_validate_ms"]
    row["submission_rows_per_image"] = len(subs[0]) / len(images)
    stock_s = 1.0 / row["stock_img_s"]
    row["forward_ratio"] = bc.ratio(row["ours_forward_img_s"], row["stock_img_s"])
    row["predict_ratio"] = bc.ratio(row["predict_img_s"], row["stock_img_s"])
    per_image_s = 1.0 / row["predict_img_s"] + (row["rows_ms"] + row["s06_ms"]) / 1e3
    row["end_to_end_ratio"] = stock_s / per_image_s
    n = int(project_images)
    p_pred = n / row["predict_img_s"]
    p_rows = n * row["rows_ms"] / 1e3 / max(1, cfg["rows_threads"])
    p_dec = n * dec_ms / 1e3 / max(1, cfg["workers"])
    row["projected_05_s"] = max(p_pred, p_rows, p_dec)
    row["projected_05_bound"] = ["predict loop", "result rows", "decode"][int(np.argmax([p_pred, p_rows, p_dec]))]
    # 06 post-processes and encodes in --workers processes (its default: one per CPU), then validates the file in one.
    row["projected_06_s"] = n * (row["s06_build_ms"] / max(1, cfg["workers"]) + row["s06_validate_ms"]) / 1e3
    row["projected_total_s"] = row["projected_05_s"] + row["projected_06_s"]
    del model
    if device.type == "cuda":
        row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.empty_cache()
    return row


def fusion_ms(model, images, orig, views, device, dtype, steps: int = 2, warm: int = 1) -> dict:
    """TTA view fusion per image (of the first two images of the batch: the host path takes about a second
    per image at 100 detections per view): 05's on-device fusion (``lib.tta._fuse_views``) vs the host
    path it replaced, timed in turns on the same views (uint8 maps on the device): every view's masks copied to
    the host, then ``lib.fusion.fuse_instances`` in numpy on uint8 / 255 maps and the fused masks quantized
    again."""
    from lib import tta as ltta
    from lib.fusion import fuse_instances

    per_image = ltta.batch_views(model, images, orig, views, [(512, 512)] * len(images), 0.0, dtype)

    def on_device():
        with torch.inference_mode():
            for i, vs in enumerate(per_image):
                ltta._fuse_views(vs, tuple(orig[i]), (512, 512), 0.5, 0.0)

    def on_host():
        for vs in per_image:
            sources = [{"masks": v["masks"].cpu().numpy().astype(np.float32) / 255.0,
                        "categories": v["categories"], "scores": v["scores"], "attr_scores": v["attr_scores"]}
                       for v in vs]
            fused = fuse_instances(sources, None, iou_thr=0.5, min_votes=1)
            np.clip(np.rint(fused["masks"] * 255), 0, 255).astype(np.uint8)

    t = bc.time_interleaved({"device": on_device, "host": on_host}, device, steps, warm)
    n = len(images)
    return {"fusion_device_ms": t["device"] / n * 1e3, "fusion_host_ms": t["host"] / n * 1e3,
            "fusion_ratio": bc.ratio(1 / t["device"], 1 / t["host"])}


def paste_inputs(n: int, image_hw: tuple[int, int], crop: int = 28, device="cpu", seed: int = 0):
    """``n`` smooth random mask crops ``(n, 1, crop, crop)`` (sigmoid of upsampled 5 x 5 noise: blobs, like a
    mask head's output) and ``(n, 4)`` float32 boxes of 20-300 px inside an ``image_hw`` image, on ``device``."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, 1, 5, 5, generator=g) * 4
    crops = torch.sigmoid(torch.nn.functional.interpolate(noise, size=(crop, crop), mode="bilinear",
                                                          align_corners=False))
    h, w = int(image_hw[0]), int(image_hw[1])
    wh = (torch.rand(n, 2, generator=g) * 280 + 20).minimum(torch.tensor([w, h], dtype=torch.float32))
    xy = torch.rand(n, 2, generator=g) * (torch.tensor([w, h], dtype=torch.float32) - wh)
    return crops.to(device), torch.cat([xy, xy + wh], 1).to(device)


def paste_ms(device, n: int = 100, image_hw: tuple[int, int] = (768, 1024), frame: int = 512, steps: int = 3,
             warm: int = 1) -> dict:
    """05's batched paste into the stored frame vs torchvision's paste at the input size + resize (what 05
    did), timed in turns on the same inputs; the same at the input size for both (see the module docstring)."""
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    from lib.mask_paste import masks_in_frame, resize_maps

    crops, boxes = paste_inputs(n, image_hw, device=device)
    out = {"mask_crops": crops, "boxes": boxes}
    store = (frame, frame)
    res = {}

    def stock():  # the model's postprocess, then 05's former resize of those maps (16 at a time)
        full = paste_masks_in_image(crops, boxes, image_hw)
        res["stock"] = torch.cat([resize_maps(full[j:j + 16], store) for j in range(0, len(full), 16)])

    def ours():
        res["ours"] = masks_in_frame(out, image_hw, store)

    with torch.inference_mode():
        t = bc.time_interleaved({"stock": stock, "ours": ours}, device, steps, warm)
        same = bc.time_interleaved({"stock": lambda: paste_masks_in_image(crops, boxes, image_hw),
                                    "ours": lambda: masks_in_frame(out, image_hw, image_hw)}, device, steps, warm)
        a, b = res["ours"] >= 0.5, res["stock"] >= 0.5
        iou = (a & b).flatten(1).sum(1).double() / (a | b).flatten(1).sum(1).clamp(min=1).double()
        row = {"detections": n, "crop": int(crops.shape[-1]), "image_hw": list(image_hw), "frame": frame,
               "paste_stock_ms": t["stock"] * 1e3, "paste_ours_ms": t["ours"] * 1e3,
               "paste_ratio": bc.ratio(1 / t["ours"], 1 / t["stock"]),
               "paste_same_size_stock_ms": same["stock"] * 1e3, "paste_same_size_ours_ms": same["ours"] * 1e3,
               "paste_same_size_ratio": bc.ratio(1 / same["ours"], 1 / same["stock"]),
               "paste_iou_mean": float(iou.mean()), "paste_iou_min": float(iou.min())}
        row["paste_stock_syncs"] = bc.count_syncs(stock, device)
        row["paste_ours_syncs"] = bc.count_syncs(ours, device)
    return row


def run(cfg: dict, device, dtype, archs=ARCHS, work_dir: Path = Path("work/bench/infer"), tta_flip: bool = True,
        project_images: int = 3200, target_s: float = 90.0) -> dict:
    """The mask paste (:func:`paste_ms`, unless ``cfg["paste_detections"]`` is 0), then every arch in ``archs``
    on ``cfg["unique_images"]`` synthetic test-size JPEGs."""
    from lib.tta import tta_views

    paste = None
    if cfg.get("paste_detections"):
        try:
            paste = paste_ms(device, int(cfg["paste_detections"]), tuple(cfg["paste_image"]),
                             steps=max(2, cfg["steps"]), warm=cfg["warmup"])
            print(f"  mask paste, {paste['detections']} masks of {tuple(paste['image_hw'])} into 512 x 512: ours "
                  f"{bc.fmt(paste['paste_ours_ms'])} ms vs stock + resize {bc.fmt(paste['paste_stock_ms'])} ms "
                  f"(x{bc.fmt(paste['paste_ratio'])}); at the input size x{bc.fmt(paste['paste_same_size_ratio'])}; "
                  f"IoU mean {bc.fmt(paste['paste_iou_mean'], '.4f')} min {bc.fmt(paste['paste_iou_min'], '.4f')}",
                  flush=True)
        except Exception as e:  # keep measuring the rest
            paste = {"error": f"{type(e).__name__}: {e}"}
    t0 = time.time()
    paths = make_test_images(Path(work_dir), cfg["unique_images"], cfg["test_size"]) if archs else []
    gen_s = time.time() - t0
    views = tta_views((1.0,), tta_flip)
    dec = decode_ms(paths, max(cfg["size"], cfg["unet_size"])) if paths else None
    rows = []
    for arch in archs:
        t0 = time.time()
        try:
            row = measure_arch(arch, cfg, paths, device, dtype, views, project_images, dec)
            row["meets_target"] = row["projected_total_s"] <= target_s
        except Exception as e:  # keep measuring the rest
            row = {"arch": arch, "error": f"{type(e).__name__}: {e}"}
        row["seconds"] = round(time.time() - t0, 1)
        rows.append(row)
        print(f"  {arch:<9} stock {bc.fmt(row.get('stock_img_s'))} img/s, 05 path {bc.fmt(row.get('predict_img_s'))} "
              f"img/s, 06 {bc.fmt(row.get('s06_ms'))} ms/img, projected {bc.fmt(row.get('projected_total_s'))} s"
              f"{'  ' + row['error'] if 'error' in row else ''}", flush=True)
    return {"rows": rows, "paste": paste, "paste_ratio": (paste or {}).get("paste_ratio"),
            "tta_flip": tta_flip, "project_images": project_images, "target_s": target_s,
            "test_images_generation_s": round(gen_s, 1), "decode_ms": dec,
            **{f"{r['arch']}_predict_ratio": r.get("predict_ratio") for r in rows},
            **{f"{r['arch']}_projected_total_s": r.get("projected_total_s") for r in rows}}


COLUMNS = [("arch", "arch"), ("batch", "batch"), ("size", "size"), ("views", "views"),
           ("instances_per_image", "inst/img"), ("stock_img_s", "stock fwd img/s"),
           ("ours_forward_img_s", "ours fwd img/s"), ("forward_ratio", "fwd ratio"),
           ("ours_cl_forward_img_s", "ours channels-last fwd img/s"), ("cl_forward_ratio", "channels-last fwd ratio"),
           ("predict_img_s", "05 path img/s"), ("predict_ratio", "05/stock"), ("rows_ms", "rows ms/img"),
           ("fusion_device_ms", "TTA fusion ms/img"), ("fusion_host_ms", "host fusion ms/img"),
           ("fusion_ratio", "fusion speed-up"), ("s06_ms", "06 ms/img"), ("end_to_end_ratio", "05+06/stock"), ("projected_05_s", "3200: 05 s"),
           ("projected_06_s", "3200: 06 s"), ("projected_total_s", "3200: total s")]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--cpu", action="store_true", help="small CPU mode (default: GPU mode, needs CUDA)")
    p.add_argument("--archs", nargs="*", choices=ARCHS, default=list(ARCHS),
                   help="models to measure (none: only the mask paste)")
    p.add_argument("--batch-size", type=int, default=None, help="images per forward (default: the mode's)")
    p.add_argument("--size", type=int, default=None, help="detector min/max size (default: 128 CPU, 1024 GPU)")
    p.add_argument("--unet-size", type=int, default=None, help="UNet min/max size (default: 128 CPU, 1024 GPU)")
    p.add_argument("--detections", type=int, default=None, help="instances kept per image and view "
                   "(default: 20 CPU, 100 GPU = torchvision's detections_per_img)")
    p.add_argument("--test-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="synthetic test JPEG size (default: 480 320 CPU, 3000 2000 GPU)")
    p.add_argument("--unique-images", type=int, default=None, help="distinct test JPEGs (the batch cycles them)")
    p.add_argument("--steps", type=int, default=None, help="timed batches per measurement")
    p.add_argument("--warmup", type=int, default=None, help="untimed batches first")
    p.add_argument("--workers", type=int, default=None,
                   help="05 DataLoader workers and 06 processes assumed by the projection")
    p.add_argument("--rows-threads", type=int, default=None,
                   help="05 result-row threads assumed by the projection (default: 05's min(4, cores/2))")
    p.add_argument("--paste-detections", type=int, default=None,
                   help="masks of the paste measurement (default 100; 0 skips it)")
    p.add_argument("--paste-image", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="input image size of the paste measurement (default 768 1024)")
    p.add_argument("--no-tta-flip", action="store_true", help="one view instead of plain + flipped")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="also time our forward in channels-last layout (05 --channels-last; default: on in GPU "
                        "mode, off in CPU mode)")
    p.add_argument("--project-images", type=int, default=3200, help="test images of the projection")
    p.add_argument("--target-s", type=float, default=90.0, help="05 + 06 time target of the projection")
    p.add_argument("--work-dir", type=Path, default=Path("work/bench/infer"), help="where the test JPEGs go")
    p.add_argument("--out", type=Path, default=Path("work/bench/infer_bench.json"), help="JSON file to write")
    return p


def config_from_args(args) -> dict:
    cfg = bc.mode_config(MODES, args, {"batch": "batch_size", "size": "size", "unet_size": "unet_size",
                                      "detections": "detections", "unique_images": "unique_images",
                                      "steps": "steps", "warmup": "warmup", "workers": "workers",
                                      "rows_threads": "rows_threads", "channels_last": "channels_last",
                                      "paste_detections": "paste_detections"})
    if args.test_size:
        cfg["test_size"] = tuple(args.test_size)
    if args.paste_image:
        cfg["paste_image"] = tuple(args.paste_image)
    cfg.setdefault("rows_threads", max(1, min(4, (os.cpu_count() or 2) // 2)))
    return cfg


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)
    device = bc.pick_device(args.cpu)
    dtype = bc.bench_dtype(device)
    cfg = config_from_args(args)
    print(f"inference, {'CPU' if args.cpu else 'GPU'} mode: {cfg}", flush=True)
    res = run(cfg, device, dtype, args.archs, args.work_dir, not args.no_tta_flip, args.project_images,
              args.target_s)
    report = {**bc.report_header("inference", args.cpu, device, dtype, cfg), **res}
    if res["rows"]:
        print()
        print(bc.table(res["rows"], COLUMNS))
    bc.write_json(args.out, report)
    print(f"\nwrote {args.out}")
    return report


if __name__ == "__main__":
    main()
