"""What a user looks at or feeds to other tools, from a prediction table: overlay PNGs and COCO results JSON.

:func:`export_predictions` post-processes every image at its original size (:mod:`lib.postprocess`; several
models are first fused, :func:`lib.fusion.combine`, as 06 would) and writes next to the table::

    overlays/<name>.png        the image with each instance's mask, class name and score (:func:`lib.viz.draw_overlay`;
                               names: :func:`overlay_names`)
    coco_results.json          COCO "results" format, one record per instance:
                               {"image_id", "file_name", "category_id", "segmentation" (RLE), "bbox", "score"}

``file_name`` is the image's id (its path below the predicted folder). Without a ground-truth file, ``image_id``
counts the images from 1 in the table's image order and ``category_id`` is the category id 0-45 of
``label_descriptions.json``. With one (``coco_gt``, :func:`read_coco_gt`: e.g. Fashionpedia's
``instances_attributes_val2020.json``) both are that file's, so ``COCO(gt).loadRes(results)`` takes them: an
image's id by its file name, a category's id by its name (a category the file lacks is left out and counted).
``segmentation`` is a pycocotools RLE of the mask at the original image size (``counts`` as str); ``bbox`` is
``[x, y, width, height]`` (:func:`lib.boxes.mask_bbox`).

The export streams by image, through 06's reader (:func:`lib.table_stream.map_images`): the prediction table
file (``predictions.parquet``) is indexed by its ``image_id`` column alone (:class:`lib.table_stream.TableIndex`:
its rows may come in any order) and read a chunk of consecutive images at a time from the row groups that hold
them; each image's masks are fused, post-processed (in ``processes`` worker processes) and then drawn and
appended to ``coco_results.json`` in image order, so memory holds a chunk's rows and one image's masks whatever
the number of images.

:func:`export_signature` is what the exported files depend on besides the image files (the predictions, the
params file's content, the ground-truth file's content): 05 exports again when it changes.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from . import files as lfiles
from . import kaggle_data as lkaggle
from . import viz
from .boxes import mask_bbox
from .fusion import Combination, combine, combine_image
from .labels import parse_class_id
from .postprocess import Instance, Params, finalize, rank_windows

__all__ = ["EXPORT_FORMAT", "export_plan", "export_table", "coco_record", "overlay_names", "CocoGt", "read_coco_gt",
           "export_signature", "remove_exports", "export_predictions"]

EXPORT_FORMAT = 2  # 2: unique overlay names, ids of a ground-truth file (exports of format 1 are redone)


def export_plan(models: list[str], params_path: str | Path | None = None) -> tuple[Combination | None, Params, str]:
    """How a table of ``models`` (names in order of first appearance) is exported: ``(combination, params,
    what)``. ``combination``: the :class:`lib.fusion.Combination` of the models to post-process, None without
    models. One model: it alone (its own masks). Several: the combination saved in ``params_path``
    (06's ``params.json``) when it has one, else all models with equal weights. ``params``: those of
    ``params_path``, else the winning recipe. ``params_path`` is read by 06's :func:`lib.tuning.saved_combination`
    alone. A combination that does not fit ``models`` is a ``ValueError`` here, before anything is exported."""
    from .tuning import saved_combination

    names = list(models)
    combination, params = saved_combination(params_path, names)
    if len(names) <= 1:
        return combination, params, names[0] if names else "no predictions"
    combination.check_models(names)
    return combination, params, f"ensemble of {'+'.join(combination.models)}"


def export_table(table: pd.DataFrame, params_path: str | Path | None = None) -> tuple[pd.DataFrame, Params, str]:
    """The table to export and its post-processing: ``(table, params, what)``, :func:`export_plan` of the
    table's models applied to the whole table in memory (:func:`lib.fusion.combine`; small tables: what
    :func:`export_predictions` does image by image)."""
    names = list(dict.fromkeys(table["model"]))
    combination, params, what = export_plan(names, params_path)
    if len(names) > 1:
        table = combine({n: table[table["model"] == n].reset_index(drop=True) for n in names}, combination)
    return table, params, what


def coco_record(number: int, image_id: str, category_id: int, mask: np.ndarray, score: float) -> dict:
    """One COCO result of a post-processed instance (``mask``: (H, W) 0/1 at the original size; ``number``
    and ``category_id``: the COCO image and category ids)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    x1, y1, x2, y2 = mask_bbox(mask) or [0, 0, 0, 0]
    return {"image_id": number, "file_name": image_id, "category_id": int(category_id),
            "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": round(float(score), 6)}


def _plain_name(image_id: str) -> str:
    return Path(image_id).with_suffix("").as_posix().replace("/", "__")


def overlay_names(image_ids) -> dict[str, str]:
    """``{image id: overlay file name}``, unique, and the same on every run for the same set of ids.

    A name is the id without its suffix, "/" written "__", plus ".png" (``sub/b.jpg`` -> ``sub__b.png``). Ids
    whose names would collide (``x.jpg`` and ``x.png``; ``a/b.jpg`` and ``a__b.jpg``; names differing only in
    letter case, one file on a case-insensitive file system) each get ``-`` and the first 8 hex digits of the
    SHA-1 of the id before ".png" (all 40 if 8 still collide)."""
    ids = list(dict.fromkeys(str(i) for i in image_ids))
    names = {i: _plain_name(i) for i in ids}
    for width in (8, 40, None):
        counts = Counter(n.casefold() for n in names.values())
        clash = [i for i in ids if counts[names[i].casefold()] > 1]
        if not clash:
            return {i: n + ".png" for i, n in names.items()}
        if width is None:
            raise RuntimeError(f"overlay names still collide: {sorted(clash)[:4]}")
        for i in clash:
            names[i] = f"{_plain_name(i)}-{hashlib.sha1(i.encode()).hexdigest()[:width]}"
    raise AssertionError("unreachable")


@dataclass
class CocoGt:
    """What the COCO results take from a ground-truth file: ``images`` file name -> image id, ``categories``
    name -> category id."""

    path: Path
    images: dict[str, int]
    categories: dict[str, int]
    by_base: dict[str, int] = field(default_factory=dict)  # file names' last part -> id, where unique

    def image_ids(self, image_ids) -> dict[str, int]:
        """``{our image id: its id in the file}``: the file name equal to the id, else to the id's last part
        (``shoot/0001.jpg`` -> ``0001.jpg``). ``ValueError`` naming the images that are not in the file, and
        two images that would share one id."""
        out, missing = {}, []
        for i in dict.fromkeys(map(str, image_ids)):
            gid = self.images.get(i, self.by_base.get(Path(i).name))
            if gid is None:
                missing.append(i)
            else:
                out[i] = gid
        if missing:
            raise ValueError(f"--coco-gt {self.path}: {len(missing)} of {len(out) + len(missing)} images are not "
                             f"in that file (matched by file name): {missing[:5]}{' ...' if len(missing) > 5 else ''}"
                             f"; its images are named e.g. {list(self.images)[:3]}")
        twice = [ids for ids in _groups(out).values() if len(ids) > 1]
        if twice:
            raise ValueError(f"--coco-gt {self.path}: images {twice[0]} all match one image of that file "
                             f"(id {out[twice[0][0]]}) by file name; predict them separately")
        return out


def _groups(mapping: dict) -> dict:
    inv: dict = {}
    for k, v in mapping.items():
        inv.setdefault(v, []).append(k)
    return inv


def read_coco_gt(path: str | Path) -> CocoGt:
    """The image ids (by file name) and category ids (by name) of a COCO-format JSON; ``ValueError`` naming
    the file for one that is not COCO."""
    path = Path(path)
    try:
        obj = lfiles.read_json(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"--coco-gt {path}: cannot read it as JSON ({e})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("images"), list) \
            or not isinstance(obj.get("categories"), list):
        raise ValueError(f"--coco-gt {path}: not a COCO file (needs lists 'images' and 'categories')")
    try:
        images = {str(im["file_name"]): im["id"] for im in obj["images"]}
        categories = {str(c["name"]): int(c["id"]) for c in obj["categories"]}
    except (KeyError, TypeError, ValueError, OverflowError) as e:  # OverflowError: an id of Infinity
        raise ValueError(f"--coco-gt {path}: an image without file_name/id or a category without name/id "
                         f"({type(e).__name__}: {e})") from None
    base = Counter(Path(f).name for f in images)
    by_base = {Path(f).name: i for f, i in images.items() if base[Path(f).name] == 1}
    return CocoGt(path, images, categories, by_base)


def _sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def export_signature(predictions_hash: str, params_path: str | Path | None, coco_gt: str | Path | None) -> dict:
    """What the exported files depend on besides the images: the predictions (05's configuration hash), the
    content of ``params_path`` and of ``coco_gt`` (None: not given), the export format."""
    return {"format": EXPORT_FORMAT, "predictions": predictions_hash,
            "params_sha256": _sha256(params_path) if params_path else None,
            "coco_gt_sha256": _sha256(coco_gt) if coco_gt else None}


def remove_exports(out_dir: str | Path, overlays: bool = True, coco: bool = True) -> None:
    """Delete what :func:`export_predictions` wrote into ``out_dir`` (the overlay PNGs, the COCO results)."""
    out_dir = Path(out_dir)
    if coco:
        (out_dir / "coco_results.json").unlink(missing_ok=True)
    d = out_dir / "overlays"
    if overlays and d.is_dir():
        for f in d.glob("*.png"):
            f.unlink()
        if not any(d.iterdir()):
            d.rmdir()


def export_predictions(out_dir: str | Path, predictions: str | Path, images: pd.DataFrame, paths: dict[str, str],
                       class_names, params_path: str | Path | None = None, overlays: bool = True,
                       coco: bool = True, progress: bool = True, coco_gt: CocoGt | str | Path | None = None,
                       processes: int = 1) -> dict:
    """Write ``overlays/`` and ``coco_results.json`` into ``out_dir`` (module docstring) for the readable
    images of ``images`` (``image_id, orig_height, orig_width[, error]``; ``paths``: image id -> file), image
    by image in the order of ``images``. ``predictions``: a prediction-table file (``predictions.parquet`` of
    05; rows in any order), read a chunk of images at a time (:func:`lib.table_stream.map_images`, fusion and
    post-processing in ``processes`` worker processes); ``ValueError`` naming it when it is not a prediction
    table. ``coco_gt``: a ground-truth file (or :func:`read_coco_gt` of one) whose image and category ids the
    COCO results use. Returns what was written: ``{"exported": what, "overlays": dir or None, "coco_results":
    file or None, "num_instances": n}``, plus ``"renamed_overlays"`` (ids whose overlay name got a hash, with
    their names) and, with ``coco_gt``, ``"categories_not_in_gt"`` (name -> instances left out)."""
    from .labels import competition_labels
    from .table_stream import TableIndex

    out_dir = Path(out_dir)
    index = TableIndex(predictions)
    combination, params, what = export_plan(index.models, params_path)
    if "error" in images:
        images = images[images["error"].fillna("") == ""]
    image_ids = images["image_id"].astype(str).tolist()
    if coco and coco_gt is not None:
        gt = coco_gt if isinstance(coco_gt, CocoGt) else read_coco_gt(coco_gt)
        numbers = gt.image_ids(image_ids)
        cat_names = competition_labels().category_names
        cat_ids = {k: gt.categories.get(n) for k, n in enumerate(cat_names)}
    else:
        numbers = {i: n for n, i in enumerate(image_ids, start=1)}
        cat_ids = None
    names = overlay_names(image_ids)
    n_inst, left_out = 0, Counter()
    sizes = [(int(h), int(w)) for h, w in zip(images["orig_height"], images["orig_width"])]
    per_image = zip(image_ids, sizes, _image_instances_of(index, combination, params, image_ids, sizes, processes,
                                                          progress), strict=True)
    with _json_list(out_dir / "coco_results.json" if coco else None) as add_record:
        for image_id, size, found in per_image:
            insts = [(i.class_id, i.full(size), i.score) for i in found]
            n_inst += len(insts)
            if coco:
                for c, m, s in insts:
                    cat = parse_class_id(c)[0]
                    cid = cat if cat_ids is None else cat_ids.get(cat)
                    if cid is None:
                        left_out[cat_names[cat]] += 1
                        continue
                    add_record(coco_record(numbers[image_id], image_id, cid, m, s))
            if overlays:
                _write_overlay(out_dir / "overlays" / names[image_id], paths[image_id], insts, size, class_names)
    out = {"exported": what, "overlays": str(out_dir / "overlays") if overlays else None,
           "coco_results": str(out_dir / "coco_results.json") if coco else None, "num_instances": n_inst,
           "renamed_overlays": {i: n for i, n in names.items() if n != _plain_name(i) + ".png"} if overlays else {}}
    if coco and cat_ids is not None:
        out["coco_gt"] = str(gt.path)
        out["categories_not_in_gt"] = dict(sorted(left_out.items()))
    return out


def _image_instances_of(index, combination: Combination | None, params: Params, image_ids: list[str],
                        sizes: list[tuple[int, int]], processes: int, progress: bool):
    """The post-processed instances (:func:`_image_instances`) of each of ``image_ids`` (``sizes``: their
    original (h, w)) in turn, from the table ``index`` (:class:`lib.table_stream.TableIndex`) of the file."""
    from .table_stream import ImageTask, Source, map_images

    tasks = (ImageTask(i, hw, hw) for i, hw in zip(image_ids, sizes))
    sources = [Source(m, index.path, m) for m in (combination.models if combination else [])]
    fused = len(sources) > 1  # then rows below the threshold but above the combination's min_score vote too
    floor = min(params.score_thresh, combination.min_score or 0.0) if fused else params.score_thresh
    return map_images(functools.partial(_image_instances, combination, params), tasks, len(image_ids), sources,
                      {index.path: index}, processes, floor, progress, desc="05 export")


def _image_instances(combination: Combination | None, params: Params, task, masks: dict[str, list]) -> list[Instance]:
    """A :func:`lib.table_stream.map_images` function: one image's masks (``masks``: model -> its
    :class:`lib.prediction_table.StoredMask` list) combined by ``combination`` (:func:`lib.fusion.combine_image`;
    None: no models) and post-processed with ``params`` at the original size ``task.size`` = (h, w):
    :class:`lib.postprocess.Instance` windows, best score first."""
    found = combine_image(masks, combination, task.orig_hw) if combination else []
    return finalize(rank_windows(found, task.size, params.score_thresh), params, task.size)


@contextlib.contextmanager
def _json_list(path: Path | None):
    """Write a JSON list to ``path`` atomically, one item at a time: yields ``add(item)``; the file reads as
    ``lib.files.atomic_write_json(path, items, indent=None)`` writes it. ``path`` None: nothing written."""
    if path is None:
        yield lambda item: None
        return
    with lfiles.atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        first = [True]

        def add(item) -> None:
            f.write(("[" if first[0] else ", ") + lfiles.to_json(item, indent=None))
            first[0] = False

        yield add
        f.write(("[" if first[0] else "") + "]\n")
        f.flush()
        os.fsync(f.fileno())


def _write_overlay(path: Path, image_path: str, insts, size: tuple[int, int], class_names) -> None:
    """The overlay PNG of one image: its post-processed instances ``[(class id, (H, W) 0/1 mask, score)]``."""
    masks = np.stack([m for _, m, _ in insts]) if insts else np.zeros((0, *size), np.uint8)
    labels = [_class_name(c, class_names) for c, _, _ in insts]
    rgb = viz.draw_overlay(lkaggle.read_image(image_path), masks, labels, [s for _, _, s in insts])
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    lfiles.atomic_write_bytes(path, buf.tobytes())


def _class_name(class_id: str, class_names) -> str:
    cat = parse_class_id(class_id)[0]
    return str(class_names[cat]) if class_names and cat < len(class_names) else str(cat)
