"""lib/label_descriptions.py: the embedded label table is the real label_descriptions.json."""
import json

from lib import label_descriptions


def test_embedded_table_equals_real_file(shared_data):
    real = json.loads((shared_data / "imaterialist2019" / "label_descriptions.json").read_text())
    assert label_descriptions.label_descriptions() == real


def test_ids_are_dense_and_names_unique():
    d = label_descriptions.label_descriptions()
    assert [c["id"] for c in d["categories"]] == list(range(46))
    assert [a["id"] for a in d["attributes"]] == list(range(92))
    assert len({c["name"] for c in d["categories"]}) == 46 and len({a["name"] for a in d["attributes"]}) == 92
