"""The prepared set: what ``01_prepare_data.py`` writes (:func:`run`) and training reads; the
ground truth of its images as a train.csv-format file (:func:`write_ground_truth`: 05's ``gt.csv`` of a split).

Per image (in parallel worker processes): read and validate its rows, read the
image without EXIF rotation, check every row's Height/Width against the pixel
array, resize the image so its long side is ``long_side`` (never upscaled),
decode each mask straight to the prepared size (:func:`lib.kaggle_data.resize_rle`: only the mask's
bounding window), and write ``images/<stem>.jpg`` then ``ann/<stem>.json`` atomically. The
annotation record is the "done" marker, so a rerun skips finished images (unless it was made with other
settings: ``long_side``, ``jpeg_quality``, format version). ``meta.json`` is removed when a run starts and
written last, so it marks a complete prepared set; temporary files a killed run left are deleted.
Then a category-stratified train/val split, ``index.parquet``, ``problems.csv``
and ``meta.json`` are written (atomically). The input directory is never modified.

Layout of a prepared set (e.g. ``work/prepared``)::

    meta.json              stage, args, labels (categories/attributes), counts, sizes, split summary
    index.parquet          one row per prepared image (see INDEX_COLUMNS)
    problems.csv           file,row,image_id,reason for every skipped row/image
    images/<stem>.jpg      the image resized so its long side is ``long_side`` (RGB content, JPEG q95)
    ann/<stem>.json        per-image annotation record (see below), written after its image
    .lock                  held (flock) by the 01 run writing the prepared set; a second run is refused

An annotation record::

    {"image_id": "abc.jpg", "orig_height": H0, "orig_width": W0, "height": H, "width": W,
     "instances": [{"category": 6, "attributes": [7, 20], "class_id": "6_7_20",
                    "rle": "<Kaggle RLE at (H, W)>", "bbox": [x1, y1, x2, y2], "row": 17}, ...],
     "problems": [[file, row, image_id, reason], ...],
     "settings": {"format_version": 1, "long_side": 1024, "jpeg_quality": 95}}

``bbox`` is in pixels of the resized image, x2/y2 exclusive (a one-pixel mask
at (r, c) has bbox [c, r, c + 1, r + 1]), as torchvision expects for masks.
The record is the per-image "done" marker: a rerun of 01 skips images whose
record exists (and was made with the same ``settings``: format version, long side, JPEG quality).
``meta.json`` is written last and removed when 01 starts, so it marks a complete prepared set:
:func:`load_meta` and :func:`load_index` refuse a directory without it.
"""
from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field
import os
import time
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import kaggle_data as lkaggle
from . import files as lfiles
from . import workers as lworkers
from . import labels as llabels
from . import rle as lrle
from .boxes import mask_bbox
from .coco_data import CocoSource, annotation_rows, read_coco

STAGE = "01_prepare_data"
FORMAT_VERSION = 1  # of the annotation records; records of another version are prepared again


@dataclass(frozen=True)
class CsvSource:
    """A train.csv of either edition. ``num_attributes``: the attribute ids its rows may use;
    ``attribute_map``: the 2020 edition's attribute ids -> the prepared set's (by name; None for 2019)."""

    path: str
    num_attributes: int
    attribute_map: dict | None = None

INDEX_COLUMNS = [
    "image_id",  # Kaggle ImageId, e.g. "abc.jpg"
    "split",  # "train" or "val"
    "height",  # resized size
    "width",
    "orig_height",
    "orig_width",
    "num_instances",
    "categories",  # space-separated sorted unique category ids, e.g. "0 6 31"
]


def stem(image_id: str) -> str:
    """File stem of a Kaggle ImageId (``"abc.jpg"`` -> ``"abc"``)."""
    return Path(image_id).stem


def image_path(prepared_dir: str | Path, image_id: str) -> Path:
    return Path(prepared_dir) / "images" / f"{stem(image_id)}.jpg"


def ann_path(prepared_dir: str | Path, image_id: str) -> Path:
    return Path(prepared_dir) / "ann" / f"{stem(image_id)}.json"


def read_ann(prepared_dir: str | Path, image_id: str) -> dict:
    return lfiles.read_json(ann_path(prepared_dir, image_id))


def load_meta(prepared_dir: str | Path) -> dict:
    p = Path(prepared_dir) / "meta.json"
    if not p.exists():
        raise FileNotFoundError(f"{p} not found: run 01_prepare_data.py first (or point --prepared-dir at its output)")
    return lfiles.read_json(p)


def load_index(prepared_dir: str | Path, split: str | None = None) -> pd.DataFrame:
    """The image index, optionally only one split ("train" / "val")."""
    p = Path(prepared_dir) / "index.parquet"
    if not p.exists():
        raise FileNotFoundError(f"{p} not found: run 01_prepare_data.py first")
    if not (Path(prepared_dir) / "meta.json").exists():
        raise FileNotFoundError(f"{Path(prepared_dir) / 'meta.json'} not found: the prepared set is incomplete "
                                f"(01_prepare_data.py did not finish); rerun it to complete the prepared set")
    df = pd.read_parquet(p)
    if split is not None:
        df = df[df["split"] == split].reset_index(drop=True)
    return df



def write_ground_truth(prepared_dir: str | Path, image_ids: Sequence[str], path: str | Path) -> int:
    """Write the annotation records of ``image_ids`` (e.g. a split's) as their ground truth: a train.csv-format
    CSV (:func:`lib.kaggle_data.write_train_csv`; masks, Height and Width at the prepared size), images in the
    order given, each record's instances in its order. Returns the number of rows; an image without instances
    has none (as in train.csv)."""
    rows = []
    for iid in image_ids:
        ann = read_ann(prepared_dir, iid)
        for inst in ann["instances"]:
            rows.append((iid, inst["rle"], int(ann["height"]), int(ann["width"]), str(inst["class_id"])))
    return lkaggle.write_train_csv(path, rows)


def decode_instances(ann: dict) -> tuple[np.ndarray, np.ndarray, list[tuple[int, ...]]]:
    """Decode a record's instances.

    Returns ``masks`` (N, H, W) uint8 0/1 (C-ordered), ``categories`` (N,) int64
    and ``attributes`` (a list of N tuples). N may be 0.
    """
    h, w = int(ann["height"]), int(ann["width"])
    inst = ann["instances"]
    masks = np.zeros((len(inst), h, w), np.uint8)
    for i, a in enumerate(inst):
        masks[i] = lrle.decode(a["rle"], (h, w))
    cats = np.array([a["category"] for a in inst], np.int64)
    attrs = [tuple(a.get("attributes", ())) for a in inst]
    return masks, cats, attrs


class OutputError(OSError):
    """Writing the prepared set failed (disk full, read-only or missing output directory): the run stops."""


def _write_output(write, path, *a) -> None:
    try:
        write(path, *a)
    except OSError as e:
        raise OutputError(e.errno, f"cannot write {path}: {e.strerror or e} (disk full or output directory "
                                   f"not writable?); the prepared set keeps what was finished - rerun to resume") from e


def record_settings(long_side: int | None, jpeg_quality: int) -> dict:
    """What an annotation record depends on besides its rows; a rerun with other settings redoes the image."""
    return {"format_version": FORMAT_VERSION, "long_side": long_side, "jpeg_quality": int(jpeg_quality)}


def prepare_image(
    source, image_dir: str, image_id: str, entries: list[tuple[int, int]] | None, out_dir: str,
    long_side: int | None, num_categories: int, num_attributes: int, jpeg_quality: int = 95,
) -> tuple[dict | None, list[lkaggle.Problem]]:
    """Prepare one image; return (index row or None if skipped, problems).

    ``source``: a :class:`CsvSource` (the image's rows at ``entries``, from :func:`lib.kaggle_data.index_csv`),
    or a :class:`lib.coco_data.CocoSource` holding the image's annotations (``entries`` None)."""
    if isinstance(source, CocoSource):
        rows, problems = annotation_rows(source, image_id, num_attributes)
        csv_path = str(source.path)
        first_row = int(source.annotations[image_id][0].get("id", 0)) if source.annotations.get(image_id) else 0
    else:
        rows, problems = lkaggle.read_rows(source.path, entries, num_categories, source.num_attributes)
        if source.attribute_map is not None:
            rows = lkaggle.remap_attributes(rows, source.attribute_map)
        csv_path = source.path
        first_row = entries[0][0] if entries else 0
    img_file = lkaggle.image_file(image_dir, image_id)
    if not rows:
        problems.append(lkaggle.Problem(str(img_file), first_row, image_id, "no valid rows for this image; skipped"))
        return None, problems
    try:
        data = lkaggle.read_image_bytes(img_file)  # read once: decoded and hashed
        rgb = lkaggle.decode_image(data, img_file)
    except ValueError as e:
        problems.append(lkaggle.Problem(str(img_file), first_row, image_id, f"{e}; image skipped"))
        return None, problems
    H, W = rgb.shape[:2]
    good = []
    for r in rows:
        if (r.height, r.width) != (H, W):
            hint = " (swapped: EXIF-rotated copy?)" if (r.height, r.width) == (W, H) else ""
            problems.append(lkaggle.Problem(
                csv_path, r.row, image_id, f"Height/Width {r.height}x{r.width} disagree with the image {H}x{W}{hint}"))
            continue
        good.append(r)
    if not good:
        problems.append(lkaggle.Problem(str(img_file), first_row, image_id, "no row matches the image size; skipped"))
        return None, problems
    h, w = lkaggle.resized_shape(H, W, long_side)
    instances = []
    for r in good:
        m = lkaggle.resize_rle(r.rle, (H, W), (h, w))
        bbox = mask_bbox(m)
        if bbox is None:
            problems.append(lkaggle.Problem(csv_path, r.row, image_id, f"mask vanishes at the resized size {h}x{w}; row skipped"))
            continue
        instances.append({"category": r.category, "attributes": list(r.attributes), "class_id": r.class_id,
                          "rle": lrle.encode(m), "bbox": bbox, "row": r.row})
    if not instances:
        problems.append(lkaggle.Problem(str(img_file), first_row, image_id, "no instance left after resizing; skipped"))
        return None, problems
    small = rgb if (h, w) == (H, W) else cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
    _write_output(lambda p, a: lkaggle.write_jpeg(p, a, jpeg_quality), image_path(out_dir, image_id), small)
    record = {"image_id": image_id, "orig_height": H, "orig_width": W, "height": h, "width": w,
              "instances": instances, "problems": [list(p) for p in problems],
              "settings": record_settings(long_side, jpeg_quality), "file_sha1": hashlib.sha1(data).hexdigest()}
    _write_output(lambda p, r: lfiles.atomic_write_json(p, r, indent=None), ann_path(out_dir, image_id), record)
    return index_row(record), problems


def index_row(record: dict) -> dict:
    """The index.parquet row of an annotation record (split filled in later), and its image file's SHA-1
    (``file_sha1``, for finding the same image under two ids; not a column)."""
    cats = sorted({int(i["category"]) for i in record["instances"]})
    return {"image_id": record["image_id"], "split": "", "height": record["height"], "width": record["width"],
            "orig_height": record["orig_height"], "orig_width": record["orig_width"],
            "num_instances": len(record["instances"]), "categories": " ".join(map(str, cats)),
            "file_sha1": record.get("file_sha1")}


def _drop_duplicate_files(rows: dict[str, dict], order: list[str], images: dict) -> list:
    """Keep one of the images whose files have the same bytes (the first in ``order``: the sources' order),
    removing the others from ``rows``; returns their problems."""
    first, problems = {}, []
    for i in order:
        sha = rows[i].get("file_sha1") if i in rows else None
        if sha is None:
            continue
        if sha in first:
            problems.append(lkaggle.Problem(str(Path(images[i][1]) / i), 0, i, f"the same image file as "
                                            f"{first[sha]!r} (identical bytes); prepared once, as {first[sha]!r}"))
            del rows[i]
        else:
            first[sha] = i
    return problems


def _work(task):
    try:
        return task[2], prepare_image(*task)
    except OutputError:
        raise  # the output is unwritable: every other image would fail the same way
    except Exception as e:  # never lose the whole run to one image
        return task[2], (None, [lkaggle.Problem(str(Path(task[1]) / task[2]), task[3][0][0] if task[3] else 0,
                                                task[2], f"unexpected error: {type(e).__name__}: {e}")])


def _worker_died(task, reason: str):
    """:func:`_work`'s result for an image whose worker process died (killed, crashed): a problem row."""
    row = task[3][0][0] if task[3] else 0
    return task[2], (None, [lkaggle.Problem(str(Path(task[1]) / task[2]), row, task[2],
                                            f"the worker process preparing this image died ({reason}); image skipped")])


def _check_image_ids(ids: list[str], images: dict, problems: list) -> list[str]:
    """Drop ImageIds that are not plain file names or whose file name (stem) another id already uses."""
    keep, stems = [], {}
    for i in ids:
        source, _, entries = images[i]
        csv_path, first_row = source.path, (entries[0][0] if entries else 0)
        if Path(i).name != i or i in (".", ".."):
            problems.append(lkaggle.Problem(str(csv_path), first_row, i,
                                            "ImageId is not a plain file name (a path); image skipped"))
        elif stem(i) in stems:
            problems.append(lkaggle.Problem(str(csv_path), first_row, i, f"ImageId has the same file stem as "
                                            f"{stems[stem(i)]!r} (one file each); image skipped"))
        else:
            stems[stem(i)] = i
            keep.append(i)
    return keep


def stratified_split(image_categories: dict[str, set[int]], val_fraction: float, seed: int) -> dict[str, str]:
    """Split images into "train"/"val" by image, stratified over categories.

    A seeded random split is repaired, rarest category first, so that every
    category present in >= 2 images has at least one image on each side
    (moving the image that carries the fewest other categories). Deterministic
    for a given input and seed.
    """
    ids = sorted(image_categories)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ids))
    n_val = int(round(len(ids) * val_fraction)) if len(ids) > 1 else 0
    n_val = min(max(n_val, 1 if val_fraction > 0 and len(ids) > 1 else 0), len(ids) - 1 if len(ids) > 1 else 0)
    split = {ids[i]: ("val" if k < n_val else "train") for k, i in enumerate(order)}
    if n_val == 0:
        return split
    by_cat: dict[int, list[str]] = {}
    for i in ids:
        for c in image_categories[i]:
            by_cat.setdefault(c, []).append(i)
    for _ in range(3):
        changed = False
        for c in sorted(by_cat, key=lambda c: (len(by_cat[c]), c)):
            members = by_cat[c]
            if len(members) < 2:
                continue
            for side, other in (("val", "train"), ("train", "val")):
                if not any(split[i] == side for i in members):
                    # Move the member whose other categories are least likely to be broken.
                    cand = sorted((i for i in members if split[i] == other), key=lambda i: (len(image_categories[i]), i))
                    split[cand[0]] = side
                    changed = True
        if not changed:
            break
    return split


@dataclass
class PrepareSettings:
    """What 01 is told (``01_prepare_data.py``'s flags, same names; see its ``--help``): the sources, the
    prepared set's size and split, processes. ``train_csv`` / ``image_dir`` / ``labels`` default to ``data_dir``'s
    ``train.csv`` / ``train/`` / ``label_descriptions.json`` (without ``data_dir``: the competition's labels,
    :mod:`lib.label_descriptions`); ``data_dir`` None with no ``coco_json`` is ``data/synthetic``.
    ``coco_json``: COCO-format instance files, ``coco_images`` the image folder of each (missing = the file's
    folder). ``long_side`` 0 keeps the size; ``processes`` 0 = ``os.cpu_count()``, 1 = in-process; ``limit`` keeps
    the first N images (sorted by ImageId). ``record``: every flag, saved as meta.json's ``args``."""

    data_dir: Path | None = None
    out_dir: Path = Path("work/prepared")
    train_csv: Path | None = None
    image_dir: Path | None = None
    labels: Path | None = None
    coco_json: list = field(default_factory=list)
    coco_images: list = field(default_factory=list)
    long_side: int = 1024
    val_fraction: float = 0.1
    seed: int = 0
    processes: int = 0
    limit: int | None = None
    jpeg_quality: int = 95
    keep_duplicate_files: bool = False
    progress: bool = True
    record: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.data_dir is None and not self.coco_json:
            self.data_dir = Path("data/synthetic")
        if len(self.coco_images) > len(self.coco_json):
            raise ValueError(f"--coco-images: {len(self.coco_images)} folders for {len(self.coco_json)} "
                             f"--coco-json files")

    def coco_sources(self) -> list[tuple]:
        """``(instances JSON, its image folder or None = the JSON's folder)`` per ``coco_json`` file."""
        return [(f, self.coco_images[k] if k < len(self.coco_images) else None) for k, f in enumerate(self.coco_json)]


def run(s: PrepareSettings) -> dict:
    """Prepare ``s.data_dir`` (Kaggle layout) and/or COCO-format files into ``s.out_dir``
    (:class:`PrepareSettings`); returns the meta dict (also written to meta.json).

    The COCO files' categories and attributes are mapped by name onto the labels (:mod:`lib.coco_data`). An
    ImageId in several sources is prepared once, from the first (Kaggle, then the COCO files in order); the
    others are reported. So is an image file with the same bytes as an earlier one under another ImageId, unless
    ``keep_duplicate_files`` (benchmarks replicate images).
    Holds the lock of ``out_dir`` (:func:`lib.files.lock_dir`) while it runs; raises ``OutputError`` when the
    prepared set cannot be written (disk full, read-only) and ``ValueError`` when nothing could be prepared.
    """
    with contextlib.ExitStack() as held:
        t0 = time.time()
        out_dir = Path(s.out_dir)
        long_side = s.long_side or None  # 0 keeps the size
        data_dir = Path(s.data_dir) if s.data_dir else None
        csv_path = Path(s.train_csv) if s.train_csv else (data_dir / "train.csv" if data_dir else None)
        image_dir = Path(s.image_dir) if s.image_dir else (data_dir / "train" if data_dir else None)
        label_file = Path(s.labels) if s.labels else (data_dir / "label_descriptions.json" if data_dir else None)
        labels, images, problems, sources = _read_inputs(data_dir, out_dir, csv_path, image_dir, label_file,
                                                         s.coco_sources())
        ids = sorted(images)[:s.limit or None]
        selected = len(ids)
        ids = _check_image_ids(ids, images, problems)
        _claim_out_dir(out_dir, held)
        rows, image_problems, todo = _finished_images(out_dir, ids, record_settings(long_side, s.jpeg_quality))
        todo = [(*images[i][:2], i, images[i][2], str(out_dir), long_side, labels.num_categories,
                 labels.num_attributes, s.jpeg_quality) for i in todo]
        with lworkers.process_map(_work, todo, min(s.processes or os.cpu_count() or 1, len(todo)), ordered=False,
                                  chunksize=4, on_crash=_worker_died) as results:
            for image_id, (row, probs) in tqdm(results, total=len(todo), desc="01 prepare", unit="img",
                                               disable=not s.progress):
                image_problems[image_id] = probs
                if row is not None:
                    rows[image_id] = row
        # Problems in ImageId order, so the report depends neither on worker scheduling nor on an earlier run.
        problems = problems + [q for i in sorted(image_problems) for q in image_problems[i]]
        if not s.keep_duplicate_files:
            kept = set(ids)
            problems += _drop_duplicate_files(rows, [i for i in images if i in kept], images)
        index = _write_tables(out_dir, rows, problems, s.val_fraction, s.seed)
        if not rows:
            raise ValueError(f"none of the {selected} images could be prepared ({len(problems)} problems): "
                             f"see {out_dir / 'problems.csv'}")
        meta = {
            "stage": STAGE, "format_version": FORMAT_VERSION, "data_dir": str(data_dir) if data_dir else None,
            "out_dir": str(out_dir), "train_csv": str(csv_path) if csv_path else None,
            "image_dir": str(image_dir) if image_dir else None, "label_file": str(label_file) if label_file else None,
            "long_side": long_side, "seed": s.seed, "val_fraction": s.val_fraction, "labels": labels.to_json(),
            "num_images_in_csv": sources[0]["num_images"] if csv_path else 0, "num_images_selected": selected,
            "num_images": len(rows), "num_images_skipped": selected - len(rows), "num_problems": len(problems),
            **_index_summary(index, labels), "seconds": round(time.time() - t0, 2), "args": s.record or {},
        }
        meta["sources"] = sources
        lfiles.atomic_write_json(out_dir / "meta.json", meta)
        return meta


def _read_inputs(data_dir: Path | None, out_dir: Path, csv_path: Path | None, image_dir: Path | None,
                 label_file: Path | None, coco) -> tuple:
    """The label set, every source's images as ``{image_id: (source, image folder, csv entries or None)}``
    (the first source of an ImageId wins), the problems found so far and a summary per source."""
    if csv_path is not None and not csv_path.exists():
        raise FileNotFoundError(f"{csv_path} not found: --data-dir must be a Kaggle-layout directory")
    edition = lkaggle.csv_layout(csv_path) if csv_path is not None else None
    if label_file is not None and edition != "2020":
        labels = llabels.load_labels(label_file)
    else:  # the 2020 edition's label file is mapped onto these by name (_csv_source)
        labels = llabels.competition_labels()
    inside = data_dir is not None and (data_dir.resolve() == out_dir.resolve()
                                       or data_dir.resolve() in out_dir.resolve().parents)
    if inside:
        raise ValueError(f"--out-dir {out_dir} must not be inside --data-dir {data_dir} (the input is never modified)")
    images, problems, sources = {}, [], []
    if csv_path is not None:
        groups, problems = lkaggle.index_csv(csv_path)
        if not groups:
            raise ValueError(f"{csv_path}: no data rows (only the header{', and bad rows' if problems else ''})")
        source, vocabulary = _csv_source(csv_path, edition, label_file, labels)
        images = {i: (source, str(image_dir), e) for i, e in groups.items()}
        sources.append({"kind": "kaggle", "edition": edition, "csv": str(csv_path), "image_dir": str(image_dir),
                        "num_images": len(groups), "attribute_vocabulary": vocabulary})
    for json_path, folder in coco:
        src = read_coco(json_path, folder or Path(json_path).parent, labels)
        problems += src.problems
        sources.append(src.summary())
        for i in src.images:
            if i in images:
                problems.append(lkaggle.Problem(str(src.path), 0, i, f"ImageId also in {images[i][0].path}; prepared "
                                                f"once, from there"))
            else:
                images[i] = (src.for_image(i), str(src.image_dir), None)
    if not images:
        raise ValueError("nothing to prepare: give --data-dir (a Kaggle-layout directory) and/or --coco-json")
    return labels, images, problems, sources


def _csv_source(csv_path: Path, edition: str, label_file: Path | None, labels) -> tuple[CsvSource, dict]:
    """The :class:`CsvSource` of a train.csv and what meta.json records of its attribute vocabulary. The 2020
    edition's categories and attributes are mapped onto ``labels`` by name (its own label file: ``label_file``);
    a category without a namesake is an error (every row of it would be lost)."""
    if edition != "2020":
        return CsvSource(str(csv_path), labels.num_attributes), {"label_file": str(label_file) if label_file else
                                                                 None, "size": labels.num_attributes}
    if label_file is None or not label_file.is_file():
        raise FileNotFoundError(f"{csv_path} is the 2020 edition's train.csv: its label_descriptions.json is "
                                f"needed (not found: {label_file})")
    mapping, names = llabels.map_vocabulary(label_file, labels)
    return (CsvSource(str(csv_path), max(names, default=-1) + 1, mapping),
            {"label_file": str(label_file), "size": len(names), "mapped": len(mapping), "onto": labels.num_attributes,
             "names": {str(k): v for k, v in sorted(names.items())}})


def _claim_out_dir(out_dir: Path, held: contextlib.ExitStack) -> None:
    """Lock ``out_dir`` (:func:`lib.files.claim_dir`), remove its meta.json and the temporary files of a killed run."""
    try:
        lfiles.claim_dir(out_dir, "01_prepare_data run", held)
    except OSError as e:  # "--out-dir ... is not writable: <reason>"
        raise OutputError(e.errno, e.strerror) from e
    try:
        # meta.json marks a complete prepared set: gone until this run finishes, so no reader takes a set that
        # a killed run left half re-prepared (e.g. with other settings) for a finished one.
        (out_dir / "meta.json").unlink(missing_ok=True)
        for sub in ("images", "ann"):
            (out_dir / sub).mkdir(parents=True, exist_ok=True)
            lfiles.remove_temp_files(out_dir / sub)  # left by a killed run; never read
    except OSError as e:
        raise OutputError(e.errno, f"cannot write to --out-dir {out_dir}: {e.strerror or e}") from e


def _same_settings(recorded: dict | None, settings: dict) -> bool:
    """A record's settings equal ``settings``; records written before the key was named ``format_version`` say
    ``cache_version``."""
    if isinstance(recorded, dict) and "cache_version" in recorded:
        recorded = {("format_version" if k == "cache_version" else k): v for k, v in recorded.items()}
    return recorded == settings


def _finished_images(out_dir: Path, ids: list[str], settings: dict):
    """Images a run with the same ``settings`` finished: ``(index rows, problems)`` of each, and the ids to do."""
    rows: dict[str, dict] = {}
    image_problems: dict[str, list[lkaggle.Problem]] = {}
    todo = []
    for i in ids:
        p = ann_path(out_dir, i)
        if p.exists() and image_path(out_dir, i).exists():
            try:
                rec = lfiles.read_json(p)
                if rec.get("image_id") == i and _same_settings(rec.get("settings"), settings):
                    rows[i] = index_row(rec)
                    image_problems[i] = [lkaggle.Problem(*q) for q in rec.get("problems", [])]
                    continue
            except (ValueError, KeyError, TypeError, AttributeError):
                pass  # unreadable record: prepare the image again
        todo.append(i)
    return rows, image_problems, todo


def _write_tables(out_dir: Path, rows: dict[str, dict], problems: list, val_fraction: float, seed: int) -> pd.DataFrame:
    """Split (stratified by category), write ``index.parquet`` and ``problems.csv``; return the index."""
    cats = {i: {int(c) for c in r["categories"].split()} for i, r in rows.items()}
    split = stratified_split(cats, val_fraction, seed)
    index = pd.DataFrame([rows[i] for i in sorted(rows)], columns=INDEX_COLUMNS)
    index["split"] = [split[i] for i in index["image_id"]]
    with lfiles.atomic_path(out_dir / "index.parquet") as tmp:
        index.to_parquet(tmp, index=False)
    with lfiles.atomic_path(out_dir / "problems.csv") as tmp:
        pd.DataFrame(problems, columns=list(lkaggle.Problem._fields)).to_csv(tmp, index=False)
    return index


def _index_summary(index: pd.DataFrame, labels) -> dict:
    """meta.json's counts: instances, split sizes, images per category, largest size."""
    cat_counts = np.zeros(labels.num_categories, np.int64)
    for cats in index["categories"]:
        for c in {int(c) for c in str(cats).split()}:
            cat_counts[c] += 1
    return {
        "num_instances": int(index["num_instances"].sum()) if len(index) else 0,
        "split": {"train": int((index["split"] == "train").sum()), "val": int((index["split"] == "val").sum())},
        "images_per_category": cat_counts.tolist(),
        "size": {"max_height": int(index["height"].max()) if len(index) else 0,
                 "max_width": int(index["width"].max()) if len(index) else 0},
    }
