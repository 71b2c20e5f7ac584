"""Stage 05 (``05_predict.py``): checkpoints + images -> prediction table (:mod:`lib.prediction_table`).

Flow of :func:`run` (settings: :class:`PredictSettings`):

1. models: each checkpoint (a ``best.pth``/``checkpoint.pth`` file, or a training out-dir, meaning its
   ``best.pth``, else ``checkpoint.pth``: :func:`resolve_checkpoint`) is rebuilt from its saved config alone
   (:func:`lib.checkpoint.load_checkpoint`); its name is the out-dir name unless ``names`` says otherwise;
2. images: the test images of a Kaggle-layout ``data_dir`` (:func:`lib.kaggle_data.list_test_images`,
   original sizes), or the images of one split of a prepared set (``prepared_dir``; "original" size = the
   prepared size; ``gt.csv`` in train.csv format is written for them, :func:`lib.prepared.write_ground_truth`,
   so 06 can score and tune on val), or
   any images (``images``: a folder or a glob pattern, :func:`images_from_folder`). A file that cannot be
   read is reported (meta.json ``skipped_images`` / ``unreadable_images``, ``images.parquet``'s ``error``) and
   skipped, the rest predicted;
3. the configuration is checked against what ``out_dir`` holds (:mod:`lib.shards`): a finished run of the
   same configuration is kept, shards of it are resumed, others are an error unless ``restart``;
4. batches of the images still to do are predicted (:mod:`lib.tta`: TTA views fused on the device)
   and written as shards every ``shard_size`` images (multiples of the batch size, so a run split by
   ``stop_after`` sees the same batches as an uninterrupted one);
5. when every image is done the shards are merged into ``predictions.parquet`` / ``images.parquet``, and
   ``meta.json`` records the run (status, configuration hash, models, timing);
6. with ``images`` (or ``overlays`` / ``coco_results``): overlay PNGs and a COCO results JSON of the
   post-processed instances (:mod:`lib.export`; ``params``: 06's params.json for the thresholds and the
   combination of several models; ``coco_gt``: a COCO file whose image ids (by file name) and category ids
   (by name) the results use, every image checked before predicting). The export follows its inputs: a
   rerun whose predictions, params file or ground-truth file differ from the last export's
   (:func:`lib.export.export_signature`, meta.json ``export``) exports again, also when the predictions are
   complete; otherwise the files there are kept.

Distributed: launched by ``torchrun`` (``WORLD_SIZE`` > 1), rank ``r`` predicts ``todo[r::world]`` of the
images still to do and writes its own shards; rank 0 merges after a barrier (gloo on CPU, nccl on CUDA).
Rank 0 holds the lock of ``out_dir`` (:func:`lib.files.lock_dir`) until the run returns.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import glob
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
from tqdm import tqdm

from . import checkpoint as lcheckpoint
from . import files as lfiles
from . import kaggle_data as lkaggle
from . import prepared as lprepared
from . import runtime
from .tta import image_batches, predict_batch, result_rows, tta_views
from .shards import ShardStore, config_hash, prediction_config

__all__ = ["PredictSettings", "resolve_checkpoint", "model_names", "images_from_data_dir", "images_from_prepared",
           "images_from_folder", "run"]


@dataclass
class PredictSettings:
    """What to predict and how (``05_predict.py``'s flags, same names; see its ``--help``)."""

    checkpoints: Sequence[str | Path]
    out_dir: Path = Path("work/predictions")
    names: Sequence[str] | None = None
    data_dir: Path | None = Path("data/synthetic")
    prepared_dir: Path | None = None
    images: str | None = None
    split: str = "val"
    limit: int = 0
    batch_size: int = 4
    workers: int = 4
    input_long_side: int = 0
    amp: str = "auto"
    device: str = "auto"
    channels_last: bool = False
    threads: int = 0
    tta_flip: bool = False
    tta_scales: Sequence[float] = field(default_factory=lambda: [1.0])
    tta_iou: float = 0.5
    mask_size: int = 512
    score_floor: float = 0.05
    shard_size: int = 100
    stop_after: int = 0
    restart: bool = False
    keep_shards: bool = False
    overlays: bool | None = None
    coco_results: bool | None = None
    params: Path | None = None
    coco_gt: Path | None = None
    progress: bool = True

    def check(self) -> None:
        if self.mask_size < 0 or not 0 <= self.score_floor <= 1 or self.batch_size < 1:
            raise ValueError("--mask-size must be >= 0, --score-floor in [0, 1], --batch-size >= 1")
        if self.images and self.prepared_dir:
            raise ValueError("--images and --prepared-dir: give one source of images")
        if self.params and not Path(self.params).is_file():
            raise ValueError(f"--params file not found: {self.params}")
        if self.coco_gt and not Path(self.coco_gt).is_file():
            raise ValueError(f"--coco-gt file not found: {self.coco_gt}")
        if self.coco_gt and self.coco_results is False:
            raise ValueError("--coco-gt gives the ids of coco_results.json: it does not go with --no-coco-results")

    def exports(self) -> tuple[bool, bool]:
        """(overlays, COCO results): on by default for ``--images`` (COCO results also with ``coco_gt``), off
        otherwise."""
        on = bool(self.images)
        coco = on or bool(self.coco_gt)
        return (on if self.overlays is None else self.overlays,
                coco if self.coco_results is None else self.coco_results)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a training out-dir -> its ``best.pth`` (else ``checkpoint.pth``)."""
    p = Path(path)
    if p.is_dir():
        for name in ("best.pth", "checkpoint.pth"):
            if (p / name).is_file():
                return p / name
        raise FileNotFoundError(f"{p}: no best.pth or checkpoint.pth in this training directory")
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    return p


def model_names(paths: Sequence[str | Path], names: Sequence[str] | None = None) -> list[str]:
    """One name per checkpoint: ``names`` if given, else the out-dir name (``work/unet/best.pth`` -> "unet")."""
    if names:
        if len(names) != len(paths):
            raise ValueError(f"--names: {len(names)} names for {len(paths)} checkpoints")
        out = [str(n) for n in names]
    else:
        out = [Path(p).name if Path(p).is_dir() else Path(p).resolve().parent.name for p in paths]
    dup = sorted({n for n in out if out.count(n) > 1})
    if dup:
        raise ValueError(f"model names {dup} are used twice (checkpoints {list(map(str, paths))}); "
                         f"give distinct --names")
    if any(not n or n == "ensemble" for n in out):
        raise ValueError(f"model names must be non-empty and not 'ensemble', got {out}")
    return out


def images_from_data_dir(data_dir: str | Path, progress: bool = True) -> pd.DataFrame:
    """Test images of a Kaggle-layout dir: ``image_id, path, orig_height, orig_width`` (original sizes)."""
    df = lkaggle.list_test_images(data_dir, progress=progress)
    df = df.assign(path=[str(lkaggle.image_file(Path(data_dir) / "test", i)) for i in df["image_id"]])
    return df[["image_id", "path", "orig_height", "orig_width"]].reset_index(drop=True)


def images_from_prepared(prepared_dir: str | Path, split: str = "val") -> pd.DataFrame:
    """Images of one split of a prepared set: ``image_id, path, orig_height, orig_width`` (= the prepared size)."""
    idx = lprepared.load_index(prepared_dir, split)
    if len(idx) == 0:
        raise ValueError(f"{prepared_dir}: split {split!r} has no images")
    return pd.DataFrame({
        "image_id": idx["image_id"].astype(str),
        "path": [str(lprepared.image_path(prepared_dir, i)) for i in idx["image_id"]],
        "orig_height": idx["height"].astype("int32"),
        "orig_width": idx["width"].astype("int32"),
    })


def images_from_folder(spec: str | Path, progress: bool = True) -> tuple[pd.DataFrame, dict[str, str], Path]:
    """Any images: a folder (its .jpg/.jpeg/.png files, not recursive) or a glob pattern (``**`` recurses).

    Returns ``(image_id, path, orig_height, orig_width)`` sorted by id (the path below the folder, or below the
    matches' common folder for a pattern), ``{id: reason}`` of the files whose size cannot be read
    (skipped), and that folder. Sizes come from the headers, EXIF orientation not applied (as the images are read).
    ``FileNotFoundError`` when nothing matches.
    """
    p = Path(spec)
    if p.is_dir():
        files, root = [f for f in p.iterdir() if f.is_file() and lkaggle.is_image_file(f)], p
    else:
        files = [Path(f) for f in glob.glob(str(spec), recursive=True) if Path(f).is_file() and lkaggle.is_image_file(f)]
        root = Path(os.path.commonpath([f.parent.resolve() for f in files])) if files else None
    if not files:
        raise FileNotFoundError(f"--images {spec}: no {'/'.join(lkaggle.IMAGE_SUFFIXES)} files there")
    base = root.resolve()
    rows, skipped = [], {}
    for image_id, f in tqdm(sorted((f.resolve().relative_to(base).as_posix(), f) for f in files), desc="images",
                            unit="img", disable=not progress):
        try:
            h, w = lkaggle.image_size(f)
        except ValueError as e:
            skipped[image_id] = str(e)
            continue
        rows.append((image_id, str(f), h, w))
    frame = pd.DataFrame(rows, columns=["image_id", "path", "orig_height", "orig_width"])
    return frame.astype({"orig_height": "int32", "orig_width": "int32"}), skipped, root


def _broadcast(obj, distributed: bool):
    if not distributed:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _load_models(paths: Sequence[Path], names: Sequence[str], device, channels_last: bool):
    """The models (eval, on ``device``) and what meta.json records of each."""
    models, infos = [], []
    for name, path in zip(names, paths):
        model, ckpt = lcheckpoint.load_checkpoint(path)
        model = model.to(device).eval()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        models.append(model)
        infos.append({"name": name, "checkpoint": str(path), "arch": ckpt["config"]["arch"],
                      "config": ckpt["config"], "stage": ckpt.get("stage"), "epoch": ckpt.get("epoch"),
                      "global_step": ckpt.get("global_step"), "best_score": ckpt.get("best_score"),
                      "labels": ckpt.get("labels")})
        del ckpt
    return models, infos


def _images(s: PredictSettings, progress: bool) -> tuple[pd.DataFrame, dict, dict]:
    """The images to predict (``image_id, path, orig_height, orig_width``), where they come from, and the files
    skipped because they cannot be read (``{image id: reason}``)."""
    skipped = {}
    if s.images:
        frame, skipped, root = images_from_folder(s.images, progress=progress)
        source = {"images": str(s.images), "root": str(root.resolve())}
    elif s.prepared_dir:
        frame = images_from_prepared(s.prepared_dir, s.split)
        source = {"prepared_dir": str(Path(s.prepared_dir).resolve()), "split": s.split}
    else:
        frame = images_from_data_dir(s.data_dir, progress=progress)
        source = {"data_dir": str(Path(s.data_dir).resolve())}
    if s.limit:
        frame = frame.head(s.limit).reset_index(drop=True)
    return frame, source, skipped


def _check_out_dir(s: PredictSettings, store: ShardStore, config: dict, held: contextlib.ExitStack) -> dict:
    """Rank 0: lock ``out_dir`` and compare its contents with ``config``: ``{"state": "complete" | "fresh" |
    "resume", "hash", ...}``. Writes the shards' config.json (and gt.csv for a prepared split)."""
    out_dir = lfiles.claim_dir(s.out_dir, "05_predict run", held)
    lfiles.remove_temp_files(store.dir)  # half-written shards of a killed run (never read); no rank writes yet
    chash = config_hash(config)
    meta_path = out_dir / "meta.json"
    old_meta = lfiles.read_json(meta_path) if meta_path.is_file() else {}
    complete = (old_meta.get("status") == "done" and (out_dir / "predictions.parquet").is_file()
                and (out_dir / "images.parquet").is_file())
    if complete and not s.restart:
        if old_meta.get("config_hash") != chash:
            raise ValueError(f"{out_dir} holds finished predictions of another configuration (hash "
                             f"{old_meta.get('config_hash')}, this run {chash}); rerun with --restart to "
                             f"replace them, or use another --out-dir")
        return {"state": "complete", "hash": chash}
    state = store.check_config(chash, config, restart=s.restart)
    store.remove_orphans()
    return {"state": state, "hash": chash, "config": config}


def _shared_status(main: bool, distributed: bool, check) -> dict:
    """Rank 0 runs ``check()``; every rank gets its result (or rank 0's error)."""
    status = None
    if main:
        try:
            status = check()
        except Exception as e:  # tell the other ranks, then raise here
            _broadcast({"state": "error", "error": f"{type(e).__name__}: {e}"}, distributed)
            raise
    status = _broadcast(status, distributed)
    if status["state"] == "error":
        raise RuntimeError(f"rank 0 stopped: {status['error']}")
    return status


def _predict_images(sub: pd.DataFrame, models, names, store: ShardStore, rank: int, world: int, s: PredictSettings,
                    views, long_side: int, dtype, device, bar) -> int:
    """Predict ``sub``'s images in batches, writing a shard every ``shard_size`` images. Returns the count."""
    bs = max(1, s.batch_size)
    shard_size = max(bs, -(-max(1, s.shard_size) // bs) * bs)  # a multiple of the batch size
    loader = image_batches(sub["path"].tolist(), long_side, bs, s.workers, pin_memory=device.type == "cuda")
    pool = cf.ThreadPoolExecutor(max_workers=max(1, min(4, (os.cpu_count() or 2) // 2)))
    shard_no, pending, shard_pos, errors, n_done = store.next_index(rank), [], [], {}, 0

    def flush():
        nonlocal shard_no, pending, shard_pos
        if shard_pos:
            images = sub.iloc[shard_pos].assign(error=[errors.get(p, "") for p in shard_pos])
            store.write(rank, shard_no, [r for f in pending for r in f.result()], images)
            shard_no, pending, shard_pos = shard_no + 1, [], []

    try:
        for positions, imgs in loader:
            bad = {p: im for p, im in zip(positions, imgs) if isinstance(im, str)}  # unreadable: skipped, reported
            errors.update(bad)
            good = [(p, im) for p, im in zip(positions, imgs) if p not in bad]
            batch = [im.to(device, non_blocking=True).float().div_(255) for _, im in good]
            orig = [(int(sub.at[p, "orig_height"]), int(sub.at[p, "orig_width"])) for p, _ in good]
            per_model = [predict_batch(m, batch, orig, views, s.mask_size, s.score_floor, dtype, s.tta_iou)
                         for m in models] if good else []
            for j, (p, _) in enumerate(good):
                iid = sub.at[p, "image_id"]
                pending.append(pool.submit(
                    lambda rs, iid=iid, o=orig[j]: [r for name, res in rs for r in result_rows(iid, name, res, o)],
                    [(name, pm[j]) for name, pm in zip(names, per_model)]))
            shard_pos += list(positions)
            n_done += len(positions)
            bar.update(len(positions) * world)  # the other ranks keep the same pace
            if len(shard_pos) >= shard_size:
                flush()
        flush()
    finally:
        pool.shutdown(wait=True)
    return n_done


def _merge(s: PredictSettings, store: ShardStore, frame: pd.DataFrame, names, meta_base: dict,
           timing: dict) -> tuple[dict, pd.DataFrame | None]:
    """Rank 0, every rank done: merge the shards when every image is predicted (streaming,
    :meth:`lib.shards.ShardStore.merge`); write meta.json. Returns the summary and the images table (None
    while images are left)."""
    out_dir = Path(s.out_dir)
    done = store.done()
    left = int((~frame["image_id"].isin(set(done["image_id"]))).sum())
    if left:
        summary = {**meta_base, "status": "partial", "images_left": left, "timing": timing}
        lfiles.atomic_write_json(out_dir / "meta.json", summary)
        print(f"05: {len(frame) - left} of {len(frame)} images predicted ({left} left); rerun the same "
              f"command to continue")
        return summary, None
    images, per_model = store.merge(out_dir / "predictions.parquet", frame["image_id"].tolist(), names)
    with lfiles.atomic_path(out_dir / "images.parquet", suffix=".parquet") as tmp:
        images.to_parquet(tmp, index=False)
    n_rows = sum(per_model.values())
    unreadable = {r.image_id: r.error for r in images.itertuples(index=False) if r.error}
    for image_id, reason in unreadable.items():
        print(f"05: could not read {image_id}, skipped: {reason}")
    summary = {**meta_base, "status": "done", "num_predictions": n_rows, "unreadable_images": unreadable,
               "predictions_per_model": {n: int(per_model.get(n, 0)) for n in names}, "timing": timing,
               "files": {"predictions": str(out_dir / "predictions.parquet"),
                         "images": str(out_dir / "images.parquet"),
                         "gt": str(out_dir / "gt.csv") if s.prepared_dir else None}}
    lfiles.atomic_write_json(out_dir / "meta.json", summary)
    if not s.keep_shards:
        store.clear()
    print(f"05: {n_rows} instances for {len(images)} images from {len(names)} models "
          f"({', '.join(names)}) -> {out_dir / 'predictions.parquet'} "
          f"({timing['images_per_s']} images/s this run)")
    return summary, images


def _export(s: PredictSettings, frame: pd.DataFrame, summary: dict, images, coco_gt=None) -> dict:
    """Rank 0, every image predicted: overlays and COCO results (:mod:`lib.export`) of ``predictions.parquet``
    (streamed by image) and the images table (``images()``, called only when something is exported), recorded
    in meta.json's ``export`` with their :func:`lib.export.export_signature`. Files of an earlier export with
    another signature are deleted; those with this one are kept (and written only when missing). ``coco_gt``:
    its :func:`lib.export.read_coco_gt`, if already read."""
    from . import export as lexport

    out_dir = Path(s.out_dir)
    overlays, coco = s.exports()
    sig = lexport.export_signature(summary["config_hash"], s.params, s.coco_gt if coco else None)
    old = summary.get("export") or {}
    if old.get("signature") != sig:  # made from other inputs (or an export of format 1, or none recorded)
        if old or (out_dir / "overlays").is_dir() or (out_dir / "coco_results.json").is_file():
            lexport.remove_exports(out_dir)
            if old and (overlays or coco):
                print("05: the predictions, --params or --coco-gt changed since the last export: exporting again")
        old = {}
    have_overlays = bool(old.get("overlays")) and (out_dir / "overlays").is_dir()
    have_coco = bool(old.get("coco_results")) and (out_dir / "coco_results.json").is_file()
    todo_overlays, todo_coco = overlays and not have_overlays, coco and not have_coco
    if not (todo_overlays or todo_coco):
        if overlays or coco:
            print(f"05: {', '.join(n for n, on in (('overlays', overlays), ('coco_results.json', coco)) if on)} "
                  f"up to date (same predictions, --params and --coco-gt as when exported)")
        if old == {} and summary.get("export"):
            summary = {k: v for k, v in summary.items() if k != "export"}
            lfiles.atomic_write_json(out_dir / "meta.json", summary)
        return summary
    written = lexport.export_predictions(out_dir, out_dir / "predictions.parquet", images(),
                                         dict(zip(frame["image_id"], frame["path"])),
                                         summary.get("labels"), s.params, todo_overlays, todo_coco, s.progress,
                                         coco_gt=(coco_gt or s.coco_gt) if todo_coco else None)
    redone = {"overlays": todo_overlays, "renamed_overlays": todo_overlays, "coco_results": todo_coco,
              "coco_gt": todo_coco, "categories_not_in_gt": todo_coco}
    record = {**old, **{k: v for k, v in written.items() if redone.get(k, True)}, "signature": sig}
    summary = {**summary, "export": record}
    lfiles.atomic_write_json(out_dir / "meta.json", summary)
    print(f"05: exported {written['num_instances']} instances ({written['exported']}): "
          f"{', '.join(v for k, v in written.items() if k in ('overlays', 'coco_results') and v)}")
    if written.get("renamed_overlays"):
        print(f"05: {len(written['renamed_overlays'])} images whose overlay names would collide got a hash in "
              f"the name (meta.json export.renamed_overlays), e.g. {next(iter(written['renamed_overlays'].items()))}")
    if written.get("categories_not_in_gt"):
        print(f"05: instances of categories not in {s.coco_gt} left out of coco_results.json: "
              f"{written['categories_not_in_gt']}")
    return summary


def run(s: PredictSettings) -> dict:
    """Stage 05. Returns the summary also written to ``meta.json`` (module docstring)."""
    with contextlib.ExitStack() as held:
        return _run(s, held)


def _run(s: PredictSettings, held: contextlib.ExitStack) -> dict:
    s.check()
    env = runtime.setup_distributed(s.device)
    rank, world, device, distributed = env["rank"], env["world_size"], env["device"], env["distributed"]
    main, out_dir, t0 = rank == 0, Path(s.out_dir), time.time()
    progress = main and s.progress
    if device.type == "cpu" and s.threads:
        torch.set_num_threads(s.threads)
    runtime.set_backend_flags()  # image sizes vary: no cuDNN autotuning
    dtype = runtime.amp_dtype(s.amp, device)
    paths, names = [resolve_checkpoint(p) for p in s.checkpoints], model_names(s.checkpoints, s.names)
    models, infos = _load_models(paths, names, device, s.channels_last)
    frame, source, skipped = _images(s, progress)
    for image_id, reason in skipped.items():
        print(f"05: skipped {image_id}: {reason}")
    views = tta_views(s.tta_scales, s.tta_flip)
    long_side = s.input_long_side or int(round(  # enough pixels for the largest view of any model
        max(int(i["config"].get("max_size") or 0) for i in infos) * max(sc for sc, _ in views)))
    amp = str(dtype).replace("torch.", "") if dtype is not None else "off"
    store = ShardStore(out_dir)

    gt = {}

    def check():
        if s.coco_gt and s.exports()[1]:  # every image must be in it: before any work
            from .export import read_coco_gt

            gt["coco"] = read_coco_gt(s.coco_gt)
            gt["coco"].image_ids(frame["image_id"])
        config = prediction_config(paths, names, frame, source, long_side, views, s.tta_iou, s.mask_size,
                                   s.score_floor, amp)
        if s.channels_last:  # float-level differences: shards of the two never mix
            config["channels_last"] = True
        status = _check_out_dir(s, store, config, held)
        if status["state"] != "complete" and s.prepared_dir:
            lprepared.write_ground_truth(s.prepared_dir, frame["image_id"], out_dir / "gt.csv")
        return status

    status = _shared_status(main, distributed, check)
    if status["state"] == "complete":
        summary = {}
        if main:
            print(f"05: {out_dir}/predictions.parquet is complete for this configuration (hash {status['hash']}); "
                  f"nothing to predict (--restart predicts again)")
            summary = _export(s, frame, lfiles.read_json(out_dir / "meta.json"),
                              lambda: pd.read_parquet(out_dir / "images.parquet"), gt.get("coco"))
        runtime.teardown_distributed(distributed)
        return summary
    meta_base = {"stage": "05_predict", "config_hash": status["hash"], "world_size": world, "device": str(device),
                 "amp": amp, "input_long_side": long_side, "tta_views": [[sc, f] for sc, f in views],
                 "mask_size": s.mask_size, "score_floor": s.score_floor, "source": source,
                 "num_images": len(frame), "models": [{k: v for k, v in i.items() if k != "labels"} for i in infos],
                 "labels": infos[0]["labels"], "skipped_images": skipped, "args": lfiles.json_safe(asdict(s))}
    if main:
        lfiles.atomic_write_json(out_dir / "meta.json", {**meta_base, "status": "running"})

    done_ids = set(store.done()["image_id"])
    todo = [k for k, iid in enumerate(frame["image_id"]) if iid not in done_ids]
    mine = todo[rank::world][: s.stop_after or None]
    sub = frame.iloc[mine].reset_index(drop=True)
    t_loop = time.time()
    with tqdm(total=len(frame), initial=len(done_ids), desc="05 predict", unit="img", disable=not progress,
              dynamic_ncols=True) as bar:
        n_done = _predict_images(sub, models, names, store, rank, world, s, views, long_side, dtype, device, bar)
    t_pred = time.time() - t_loop
    counts = runtime.gather_counts(n_done, distributed, world)
    summary = {}
    if main:
        timing = {"seconds": round(time.time() - t0, 2), "predict_seconds": round(t_pred, 2),
                  "images_this_run": int(sum(counts)), "images_per_s": round(sum(counts) / max(t_pred, 1e-9), 3)}
        summary, images = _merge(s, store, frame, names, meta_base, timing)
        if images is not None:
            summary = _export(s, frame, summary, lambda: images, gt.get("coco"))
    runtime.teardown_distributed(distributed, barrier=True)
    return summary
