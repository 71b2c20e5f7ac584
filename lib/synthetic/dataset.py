"""Writing the dataset, :func:`generate_dataset`: ImageIds and image sizes from the seed, the JPEGs, the
CSVs and the marker that decides whether a set is reused or regenerated."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .. import files as lfiles
from .. import rle as lrle
from ..label_descriptions import label_descriptions
from ..labels import N_CATEGORIES, format_class_id
from .formats import _row_2020, coco_json, edition_2020_labels
from .image import make_image
from .presets import preset_settings

GENERATOR_VERSION = 1
MARKER = "synthetic.json"

OUTPUTS = ("train", "test", "train.csv", "test_ground_truth.csv", "sample_submission.csv",
           "label_descriptions.json", MARKER)
_SPLIT_CODE = {"train": 1, "test": 2}


def image_id_for(seed: int, split: str, index: int) -> str:
    """Deterministic Kaggle-style ImageId: 32 hex characters + ".jpg"."""
    h = hashlib.blake2b(f"imaterialist2019-synthetic:{int(seed)}:{split}:{int(index)}".encode(), digest_size=16)
    return h.hexdigest() + ".jpg"


def image_size(rng: np.random.Generator, min_side: int, max_side: int) -> tuple[int, int]:
    """(H, W) with long side in [min_side, max_side]: ~70% portrait, ~22% landscape, ~8% square."""
    long_side = int(rng.integers(min_side, max_side + 1))
    kind = float(rng.random())
    if kind < 0.08:
        return long_side, long_side
    short = max(16, int(round(long_side * float(rng.uniform(0.56, 0.85)))))
    return (long_side, short) if kind < 0.78 else (short, long_side)


def _force_for(counts: np.ndarray, index: int, k: int = 3, categories=None) -> tuple[int, ...]:
    """The ``k`` least-seen of ``categories`` (None = all) so far (ties rotate with ``index``), if seen less
    than a target."""
    target = 1 + index // 12
    pool = range(N_CATEGORIES) if categories is None else categories
    order = sorted(pool, key=lambda c: (int(counts[c]), (c - 7 * index) % N_CATEGORIES))
    return tuple(c for c in order[:k] if counts[c] < target)


def _jpeg_bytes(img_rgb: np.ndarray, quality: int) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality), cv2.IMWRITE_JPEG_OPTIMIZE, 0, cv2.IMWRITE_JPEG_PROGRESSIVE, 0]
    if hasattr(cv2, "IMWRITE_JPEG_SAMPLING_FACTOR"):
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420]
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img_rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise RuntimeError("cv2.imencode failed to write a JPEG")
    return buf.tobytes()


def _write_annotations(out: Path, rows: dict, params: dict, edition: str, coco: bool) -> None:
    """train.csv, test_ground_truth.csv and sample_submission.csv in the ``edition``'s layout (and, with
    ``coco``, the instance JSONs) from the rows of each split."""
    header = "ImageId,EncodedPixels,Height,Width,ClassId"
    for split, name in (("train", "train.csv"), ("test", "test_ground_truth.csv")):
        ordered = sorted(rows[split], key=lambda r: r[0])  # stable: instance order kept within an image
        if edition == "2020":
            lfiles.atomic_write_text(out / name, _csv_text(header + ",AttributesIds", map(_row_2020, ordered)))
        else:
            lfiles.atomic_write_text(out / name, _csv_text(header, ordered))
    if coco:
        for split in ("train", "test"):
            lfiles.atomic_write_json(out / f"instances_{split}.json", coco_json(sorted(rows[split], key=lambda r: r[0])),
                                     indent=None)
    test_ids = sorted(image_id_for(params["seed"], "test", i) for i in range(params["n_test"]))
    if edition == "2020":
        lfiles.atomic_write_text(out / "sample_submission.csv", _csv_text("ImageId,EncodedPixels,ClassId,AttributesIds",
                                                                          [(t, "1 1", "0", "") for t in test_ids]))
    else:
        lfiles.atomic_write_text(out / "sample_submission.csv",
                                 _csv_text("ImageId,EncodedPixels,ClassId", [(t, "1 1", "0") for t in test_ids]))


def _csv_text(header: str, rows) -> str:
    return header + "\n" + "".join(",".join(str(v) for v in r) + "\n" for r in rows)


def _check_params(n_train, n_test, seed, min_side, max_side, jpeg_quality, preset) -> dict:
    preset_settings(preset)
    params = {"n_train": n_train, "n_test": n_test, "seed": seed, "min_side": min_side, "max_side": max_side,
              "jpeg_quality": jpeg_quality}
    for k, v in params.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"{k} must be an integer, got {v!r}")
    params = {k: int(v) for k, v in params.items()}
    if params["n_train"] < 1 or params["n_test"] < 0:
        raise ValueError(f"need n_train >= 1 and n_test >= 0, got {n_train}, {n_test}")
    if params["seed"] < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not 32 <= params["min_side"] <= params["max_side"]:
        raise ValueError(f"need 32 <= min_side <= max_side, got min_side={min_side}, max_side={max_side}")
    if not 1 <= params["jpeg_quality"] <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    return dict(params, preset=preset)


def _existing(out: Path, params: dict) -> dict | None:
    """The marker's summary if ``out`` already holds this exact dataset; raises if ``out`` is not ours."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a directory")
    if not out.exists() or not any(out.iterdir()):
        return None
    marker = out / MARKER
    if not marker.is_file():
        raise ValueError(f"refusing to write the synthetic dataset into {out}: it is not empty and has no "
                         f"{MARKER} marker (it may be a real dataset); choose an empty or new directory")
    try:
        meta = lfiles.read_json(marker)
    except ValueError as e:
        raise ValueError(f"refusing to overwrite {out}: {e}") from None
    if not isinstance(meta, dict) or meta.get("generator") != "lib.synthetic":
        raise ValueError(f"refusing to overwrite {out}: {marker} was not written by lib.synthetic")
    if (meta.get("complete") and meta.get("version") == GENERATOR_VERSION and meta.get("params") == params
            and all((out / name).exists() for name in OUTPUTS)
            and len(list((out / "train").glob("*.jpg"))) == params["n_train"]
            and len(list((out / "test").glob("*.jpg"))) == params["n_test"]):
        return meta
    for name in OUTPUTS:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    return None


def generate_dataset(out_dir, n_train: int = 48, n_test: int = 12, seed: int = 0, min_side: int = 256,
                     max_side: int = 768, jpeg_quality: int = 90, progress: bool = True,
                     preset: str = "realistic", coco: bool = False, edition: str = "2019") -> dict:
    """Write the synthetic dataset (layout in the module docstring) into ``out_dir``; return its summary.

    ``preset`` ("realistic" or "demo", see :data:`PRESETS`) is recorded with the other parameters in the
    marker; an unknown preset raises ``ValueError``. ``coco``: also write the same annotations in COCO
    format (``instances_train.json`` / ``instances_test.json``, :func:`coco_json`), as Fashionpedia ships them.
    ``edition="2020"``: the CSVs, ``label_descriptions.json`` and ``sample_submission.csv`` in the 2020
    edition's layout (:func:`edition_2020_labels`: the 2019 attributes under sparse ids, in their own
    AttributesIds column).

    ``out_dir`` is created if needed. A non-empty directory without a ``synthetic.json`` marker is
    refused (``ValueError``) so a real dataset is never overwritten. If the marker records the same
    parameters (and the files are there) nothing is regenerated; with different parameters the
    previous synthetic files are removed and the set is rebuilt. The summary is the marker's content
    plus ``out_dir`` and ``reused`` (True when nothing was regenerated).
    """
    params = _check_params(n_train, n_test, seed, min_side, max_side, jpeg_quality, preset)
    if coco:  # only then in the marker, so the sets written without it stay as they were
        params["coco"] = True
    if edition not in ("2019", "2020"):
        raise ValueError(f"edition must be '2019' or '2020', got {edition!r}")
    if edition == "2020":
        params["edition"] = edition
    cfg = preset_settings(preset)
    out = Path(out_dir)
    meta = _existing(out, params)
    if meta is not None:
        return dict(meta, out_dir=str(out), reused=True)
    out.mkdir(parents=True, exist_ok=True)
    base = {"generator": "lib.synthetic", "version": GENERATOR_VERSION, "params": params}
    lfiles.atomic_write_json(out / MARKER, dict(base, complete=False))
    labels = label_descriptions() if edition == "2019" else edition_2020_labels()
    lfiles.atomic_write_text(out / "label_descriptions.json", lfiles.to_json(labels, indent=2) + "\n")
    rows = {"train": [], "test": []}
    counts = {"train": np.zeros(N_CATEGORIES, np.int64), "test": np.zeros(N_CATEGORIES, np.int64)}
    images = {"train": np.zeros(N_CATEGORIES, np.int64), "test": np.zeros(N_CATEGORIES, np.int64)}
    sizes = {"train": [], "test": []}
    bar = tqdm(total=params["n_train"] + params["n_test"], desc="synthetic images", unit="img", disable=not progress)
    for split in ("train", "test"):
        (out / split).mkdir(exist_ok=True)
        for i in range(params[f"n_{split}"]):
            rng = np.random.default_rng([params["seed"], _SPLIT_CODE[split], i])
            h, w = image_size(rng, params["min_side"], params["max_side"])
            img, inst = make_image(rng, h, w, force=_force_for(images[split], i, cfg["force"], cfg["categories"]),
                                   preset=preset)
            image_id = image_id_for(params["seed"], split, i)
            lfiles.atomic_write_bytes(out / split / image_id, _jpeg_bytes(img, params["jpeg_quality"]))
            seen = set()
            for d in inst:
                rows[split].append((image_id, lrle.encode(d["mask"]), h, w,
                                    format_class_id(d["category"], d["attributes"])))
                counts[split][d["category"]] += 1
                seen.add(d["category"])
            for c in seen:
                images[split][c] += 1
            sizes[split].append((h, w))
            bar.update(1)
    bar.close()
    _write_annotations(out, rows, params, edition, coco)

    def size_summary(sz):
        if not sz:
            return {"images": 0}
        hs, ws = np.array(sz).T
        return {"images": len(sz), "portrait": int((hs > ws).sum()), "landscape": int((hs < ws).sum()),
                "square": int((hs == ws).sum()), "min_height": int(hs.min()), "max_height": int(hs.max()),
                "min_width": int(ws.min()), "max_width": int(ws.max())}

    meta = dict(base, complete=True,
                counts={"train_images": params["n_train"], "test_images": params["n_test"],
                        "train_rows": len(rows["train"]), "test_rows": len(rows["test"])},
                sizes={s: size_summary(sizes[s]) for s in ("train", "test")},
                category_counts={s: {str(c): int(counts[s][c]) for c in range(N_CATEGORIES)} for s in counts},
                category_images={s: {str(c): int(images[s][c]) for c in range(N_CATEGORIES)} for s in images})
    lfiles.atomic_write_json(out / MARKER, meta)
    return dict(meta, out_dir=str(out), reused=False)
