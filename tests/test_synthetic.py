"""Tests for lib/synthetic/: the offline synthetic dataset in the Kaggle iMaterialist 2019 layout."""
import csv
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from lib import rle, synthetic
from lib.label_descriptions import ATTRIBUTES, label_descriptions
from lib.labels import ATTRIBUTE_CATEGORIES, parse_class_id

SMALL = dict(n_train=6, n_test=2, seed=0, min_side=160, max_side=256, progress=False)
FILES = ("train.csv", "test_ground_truth.csv", "sample_submission.csv", "label_descriptions.json",
         "synthetic.json")
GARMENTS = set(range(13))
PATTERN_IDS = {a[0] for a in ATTRIBUTES if a[2] in ("textile pattern", "animal")}
LENGTH_IDS = {a[0] for a in ATTRIBUTES if a[2] == "length"}


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def decoded(rows: list[dict]) -> dict[str, list[tuple[int, tuple, np.ndarray]]]:
    """ImageId -> [(category, attributes, mask)] with masks decoded at the row's Height x Width."""
    out: dict[str, list] = {}
    for r in rows:
        cat, attrs = parse_class_id(r["ClassId"])
        m = rle.decode(r["EncodedPixels"], (int(r["Height"]), int(r["Width"])))
        out.setdefault(r["ImageId"], []).append((cat, attrs, m.astype(bool)))
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("syn") / "a"
    synthetic.generate_dataset(d, **SMALL)
    return d


@pytest.fixture(scope="module")
def default_set(tmp_path_factory) -> tuple[Path, dict]:
    d = tmp_path_factory.mktemp("syn_default") / "data"
    return d, synthetic.generate_dataset(d, progress=False)


def test_layout_and_determinism(small, tmp_path):
    for name in FILES:
        assert (small / name).is_file(), name
    assert len(list((small / "train").glob("*.jpg"))) == 6
    assert len(list((small / "test").glob("*.jpg"))) == 2
    again = tmp_path / "b"
    synthetic.generate_dataset(again, **SMALL)
    a, b = all_files(small), all_files(again)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name] == b[name], f"{name} differs between two runs with the same seed"


def test_different_seed_differs(small, tmp_path):
    other = tmp_path / "c"
    synthetic.generate_dataset(other, **dict(SMALL, seed=1))
    assert (other / "train.csv").read_bytes() != (small / "train.csv").read_bytes()
    assert not set(p.name for p in (other / "train").iterdir()) & set(p.name for p in (small / "train").iterdir())


def test_image_ids_are_kaggle_like(small):
    ids = [p.name for p in (small / "train").iterdir()] + [p.name for p in (small / "test").iterdir()]
    assert len(set(ids)) == 8
    assert all(re.fullmatch(r"[0-9a-f]{32}\.jpg", i) for i in ids)
    assert synthetic.image_id_for(0, "train", 0) == synthetic.image_id_for(0, "train", 0)
    assert synthetic.image_id_for(0, "train", 0) != synthetic.image_id_for(0, "test", 0)


@pytest.mark.parametrize("csv_name,split", [("train.csv", "train"), ("test_ground_truth.csv", "test")])
def test_rows_decode_inside_the_real_jpeg_size(small, csv_name, split):
    rows = read_csv(small / csv_name)
    assert rows and list(rows[0]) == ["ImageId", "EncodedPixels", "Height", "Width", "ClassId"]
    ids = [r["ImageId"] for r in rows]
    assert ids == sorted(ids)
    images = {p.name for p in (small / split).iterdir()}
    assert set(ids) == images  # every image has at least one instance, no row points elsewhere
    sizes = {}
    for name in images:
        img = cv2.imread(str(small / split / name), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        assert img is not None and img.ndim == 3
        sizes[name] = img.shape[:2]
    for r in rows:
        h, w = int(r["Height"]), int(r["Width"])
        assert (h, w) == sizes[r["ImageId"]], r["ImageId"]
        assert max(h, w) <= 256 and max(h, w) >= 160
        m = rle.decode(r["EncodedPixels"], (h, w))  # strict: sorted runs, inside H*W
        assert m.sum() >= synthetic.MIN_VISIBLE_PX
        cat, attrs = parse_class_id(r["ClassId"])
        if attrs:
            assert cat in ATTRIBUTE_CATEGORIES, r["ClassId"]


def test_sample_submission_lists_exactly_the_test_images(small):
    rows = read_csv(small / "sample_submission.csv")
    assert list(rows[0]) == ["ImageId", "EncodedPixels", "ClassId"]
    assert sorted(r["ImageId"] for r in rows) == sorted(p.name for p in (small / "test").iterdir())
    assert len(rows) == 2
    assert all(r["EncodedPixels"] == "1 1" and r["ClassId"] == "0" for r in rows)


def test_label_descriptions_and_marker(small):
    assert json.loads((small / "label_descriptions.json").read_text()) == label_descriptions()
    meta = json.loads((small / "synthetic.json").read_text())
    assert meta["complete"] is True and meta["version"] == synthetic.GENERATOR_VERSION
    assert meta["params"] == {k: v for k, v in SMALL.items() if k != "progress"} | {"jpeg_quality": 90,
                                                                                    "preset": "realistic"}
    assert meta["counts"]["train_rows"] == len(read_csv(small / "train.csv"))
    assert sum(meta["category_counts"]["train"].values()) == meta["counts"]["train_rows"]


def test_label_descriptions_match_the_real_file_bytes(small, shared_data):
    real = shared_data / "imaterialist2019" / "label_descriptions.json"
    assert (small / "label_descriptions.json").read_bytes() == real.read_bytes()


def test_refuses_a_non_synthetic_directory(tmp_path):
    d = tmp_path / "real"
    d.mkdir()
    (d / "train.csv").write_text("ImageId,EncodedPixels,Height,Width,ClassId\n")
    with pytest.raises(ValueError, match="synthetic.json"):
        synthetic.generate_dataset(d, **SMALL)
    assert (d / "train.csv").read_text() == "ImageId,EncodedPixels,Height,Width,ClassId\n"
    assert sorted(p.name for p in d.iterdir()) == ["train.csv"]
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        synthetic.generate_dataset(f, **SMALL)


def test_reuses_same_parameters_and_regenerates_on_change(tmp_path):
    d = tmp_path / "d"
    first = synthetic.generate_dataset(d, **SMALL)
    assert first["reused"] is False
    stamp = (d / "train.csv").stat().st_mtime_ns
    second = synthetic.generate_dataset(d, **SMALL)
    assert second["reused"] is True and (d / "train.csv").stat().st_mtime_ns == stamp
    (d / "notes.txt").write_text("kept")
    third = synthetic.generate_dataset(d, **dict(SMALL, n_train=3))
    assert third["reused"] is False
    assert len(list((d / "train").glob("*.jpg"))) == 3
    assert len({r["ImageId"] for r in read_csv(d / "train.csv")}) == 3
    assert (d / "notes.txt").read_text() == "kept"


@pytest.mark.parametrize("bad", [dict(min_side=300, max_side=256), dict(n_train=0), dict(seed=-1),
                                 dict(jpeg_quality=0), dict(n_test=1.5)])
def test_bad_parameters(tmp_path, bad):
    with pytest.raises(ValueError):
        synthetic.generate_dataset(tmp_path / "x", **dict(SMALL, **bad))


def test_attribute_id_by_name():
    for i, name, *_ in ATTRIBUTES:
        assert synthetic.attribute_id(name) == i
    with pytest.raises(KeyError, match="v-neck"):
        synthetic.attribute_id("v-neck")


def draw(seed: int, n: int = 12, size=(240, 180), force=()):
    for i in range(n):
        yield synthetic.make_image(np.random.default_rng([seed, i]), *size, force=force)


def test_make_image_outputs_and_determinism():
    img, inst = synthetic.make_image(np.random.default_rng(7), 200, 150)
    assert img.shape == (200, 150, 3) and img.dtype == np.uint8
    assert inst
    for d in inst:
        assert set(d) == {"category", "attributes", "mask"}
        assert 0 <= d["category"] < 46 and isinstance(d["attributes"], tuple)
        assert d["mask"].shape == (200, 150) and d["mask"].dtype == np.uint8
        assert set(np.unique(d["mask"])) <= {0, 1} and d["mask"].sum() >= synthetic.MIN_VISIBLE_PX
    img2, inst2 = synthetic.make_image(np.random.default_rng(7), 200, 150)
    assert np.array_equal(img, img2) and len(inst) == len(inst2)
    assert all(np.array_equal(a["mask"], b["mask"]) for a, b in zip(inst, inst2))
    img3, _ = synthetic.make_image(np.random.default_rng(8), 200, 150)
    assert not np.array_equal(img, img3)


def test_whole_items_do_not_overlap_occlusion_is_applied():
    """Garments/accessories (0-26) are visible areas: a later item or figure removes pixels from earlier ones."""
    for _, inst in draw(3, n=10):
        whole = [d["mask"].astype(bool) for d in inst if d["category"] <= 26]
        total = np.zeros_like(whole[0], np.int32)
        for m in whole:
            total += m
        assert total.max() <= 1


def test_parts_overlap_their_garments():
    sleeves = overlapping = 0
    garment_parts = {27, 28, 29, 31, 32, 33}
    n_parts = n_inside = 0
    for _, inst in draw(5, n=10, size=(320, 240), force=(31, 28, 29, 33)):
        garments = np.zeros(inst[0]["mask"].shape, bool)
        for d in inst:
            if d["category"] in GARMENTS:
                garments |= d["mask"].astype(bool)
        for d in inst:
            m = d["mask"].astype(bool)
            if d["category"] == 31:
                sleeves += 1
                overlapping += bool((m & garments).any())
            if d["category"] in garment_parts:
                n_parts += 1
                n_inside += (m & garments).sum() >= 0.5 * m.sum()
    assert sleeves >= 10
    assert overlapping >= 0.9 * sleeves
    assert n_inside >= 0.8 * n_parts


def test_attributes_follow_the_drawing(default_set):
    d, _ = default_set
    rows = read_csv(d / "train.csv") + read_csv(d / "test_ground_truth.csv")
    with_attrs = 0
    for r in rows:
        cat, attrs = parse_class_id(r["ClassId"])
        if not attrs:
            continue
        with_attrs += 1
        assert cat in ATTRIBUTE_CATEGORIES, r["ClassId"]
        if cat in GARMENTS:
            assert len(set(attrs) & PATTERN_IDS) == 1, r["ClassId"]  # exactly one textile pattern
            assert len(set(attrs) & LENGTH_IDS) <= 1, r["ClassId"]
        if cat in (8, 10):
            assert len(set(attrs) & LENGTH_IDS) == 1, r["ClassId"]  # skirts and dresses always have a length
    assert with_attrs >= 0.3 * sum(parse_class_id(r["ClassId"])[0] in GARMENTS for r in rows)


def test_default_dataset_covers_every_category(default_set):
    d, summary = default_set
    cats = {parse_class_id(r["ClassId"])[0] for r in read_csv(d / "train.csv")}
    assert cats == set(range(46))
    assert summary["counts"]["train_images"] == 48 and summary["counts"]["test_images"] == 12
    sizes = summary["sizes"]["train"]
    assert sizes["portrait"] > sizes["landscape"] > 0
    assert 256 <= max(sizes["max_height"], sizes["max_width"]) <= 768
    n_per_image = decoded(read_csv(d / "test_ground_truth.csv"))
    assert len(n_per_image) == 12


# ------------------------------------------------------------------------------------------ presets
DEMO = dict(SMALL, n_train=8, n_test=3, min_side=96, max_side=160, preset="demo")


@pytest.fixture(scope="module")
def demo_set(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("syn_demo") / "a"
    synthetic.generate_dataset(d, **DEMO)
    return d


def test_demo_preset_is_deterministic_and_differs_from_realistic(demo_set, small, tmp_path):
    again = tmp_path / "b"
    synthetic.generate_dataset(again, **DEMO)
    assert all_files(demo_set) == all_files(again)
    realistic = tmp_path / "c"
    synthetic.generate_dataset(realistic, **dict(DEMO, preset="realistic"))
    assert (realistic / "train.csv").read_bytes() != (demo_set / "train.csv").read_bytes()


def test_demo_preset_draws_one_figure_in_its_categories(demo_set):
    wanted = set(synthetic.PRESETS["demo"]["categories"])
    assert wanted == {1, 6, 8}
    for name in ("train.csv", "test_ground_truth.csv"):
        per_image = decoded(read_csv(demo_set / name))
        assert len(per_image) == (8 if name == "train.csv" else 3)  # every image has instances
        for image_id, inst in per_image.items():
            cats = [c for c, _, _ in inst]
            # one figure: exactly one top and one bottom (pants or skirt), nothing else
            assert cats.count(1) == 1, (image_id, cats)
            assert sum(c in (6, 8) for c in cats) == 1 and set(cats) <= wanted, (image_id, cats)
    meta = json.loads((demo_set / "synthetic.json").read_text())
    assert meta["params"]["preset"] == "demo"
    seen = {int(c) for split in ("train", "test") for c, n in meta["category_counts"][split].items() if n}
    assert seen <= wanted and 1 in seen


def test_make_image_demo_preset_over_many_images():
    for i in range(40):
        rng = np.random.default_rng([3, 1, i])
        img, inst = synthetic.make_image(rng, 160, 110, preset="demo")
        assert img.shape == (160, 110, 3)
        cats = sorted(d["category"] for d in inst)
        assert cats in ([1, 6], [1, 8]), (i, cats)


def test_default_preset_is_realistic():
    a = synthetic.make_image(np.random.default_rng(5), 200, 150)
    b = synthetic.make_image(np.random.default_rng(5), 200, 150, preset="realistic")
    assert np.array_equal(a[0], b[0]) and len(a[1]) == len(b[1])


def test_regenerates_on_preset_change(tmp_path):
    d = tmp_path / "d"
    assert synthetic.generate_dataset(d, **dict(DEMO, preset="realistic"))["reused"] is False
    realistic_rows = (d / "train.csv").read_bytes()
    demo = synthetic.generate_dataset(d, **DEMO)
    assert demo["reused"] is False and demo["params"]["preset"] == "demo"
    assert (d / "train.csv").read_bytes() != realistic_rows
    assert {parse_class_id(r["ClassId"])[0] for r in read_csv(d / "train.csv")} <= {1, 6, 8}
    assert synthetic.generate_dataset(d, **DEMO)["reused"] is True


@pytest.mark.parametrize("preset", ["easy", "", None, "Demo"])
def test_unknown_preset_is_a_clear_error(tmp_path, preset):
    with pytest.raises(ValueError, match="unknown synthetic preset.*demo.*realistic"):
        synthetic.generate_dataset(tmp_path / "x", **dict(DEMO, preset=preset))
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="unknown synthetic preset"):
        synthetic.make_image(np.random.default_rng(0), 64, 48, preset=preset)


def test_prepare_script_offers_every_preset():
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("prepare_script", REPO / "01_prepare_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    parser = mod.get_args_parser()
    assert set(parser._option_string_actions["--synthetic-preset"].choices) == set(synthetic.PRESETS)
    assert parser.parse_args([]).synthetic_preset == "realistic"
    assert parser.parse_args(["--synthetic-preset", "demo"]).synthetic_preset == "demo"
