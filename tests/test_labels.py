"""lib/labels.py: label file, ClassId parsing/formatting, category specs."""
import json

import pytest

from lib import label_table, labels


def test_real_label_file_loads(shared_data):
    ls = labels.load_labels(shared_data / "imaterialist2019" / "label_descriptions.json")
    assert ls.num_categories == 46 and ls.num_attributes == 92 and ls.num_classes == 47
    assert ls.category_names[0] == "shirt, blouse" and ls.category_names[31] == "sleeve"
    assert ls.categories[45]["supercategory"] == "decorations"


def test_embedded_table_equals_real_file(shared_data):
    real = json.loads((shared_data / "imaterialist2019" / "label_descriptions.json").read_text())
    assert label_table.label_descriptions() == real


@pytest.mark.parametrize("cid, want", [
    ("6", (6, ())),
    ("10_7_20_24", (10, (7, 20, 24))),
    ("10_3_20_34_56_69_91", (10, (3, 20, 34, 56, 69, 91))),
    ("45", (45, ())),
])
def test_parse_class_id(cid, want):
    assert labels.parse_class_id(cid) == want


@pytest.mark.parametrize("bad, why", [
    ("46", "unknown category"),
    ("6_92", "unknown attribute"),
    ("a", "not a non-negative integer"),
    ("", "not a non-negative integer"),
    ("6__7", "not a non-negative integer"),
    ("-1", "not a non-negative integer"),
    ("6_7_7", "repeated"),
])
def test_parse_class_id_rejects(bad, why):
    with pytest.raises(ValueError, match=why):
        labels.parse_class_id(bad)


def test_format_roundtrip():
    assert labels.format_class_id(10, (24, 7, 20)) == "10_7_20_24"
    assert labels.format_class_id(6) == "6"
    assert labels.parse_class_id(labels.format_class_id(3, [91, 0])) == (3, (0, 91))


def test_label_mapping():
    assert labels.category_to_label(0) == 1 and labels.label_to_category(46) == 45
    with pytest.raises(ValueError):
        labels.label_to_category(0)


def test_category_specs():
    assert labels.resolve_category_spec("garments") == tuple(range(27))
    assert labels.resolve_category_spec("parts") == tuple(range(27, 46))
    assert labels.resolve_category_spec("0-2,31") == (0, 1, 2, 31)
    assert labels.resolve_category_spec(None) == tuple(range(46))
    with pytest.raises(ValueError, match="out of range"):
        labels.resolve_category_spec("40-50")
    with pytest.raises(ValueError, match="bad category spec"):
        labels.resolve_category_spec("shoes")


def test_bad_label_file(tmp_path):
    p = tmp_path / "l.json"
    p.write_text('{"categories": [{"id": 1, "name": "x"}], "attributes": []}')
    with pytest.raises(ValueError, match="categories\\[0\\]"):
        labels.load_labels(p)
    p.write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        labels.load_labels(p)
    with pytest.raises(FileNotFoundError, match="label file not found"):
        labels.load_labels(tmp_path / "missing.json")
