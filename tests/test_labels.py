"""lib/labels.py: label file, ClassId parsing/formatting, category specs."""
import pytest

from lib import labels


def test_real_label_file_loads(shared_data):
    ls = labels.load_labels(shared_data / "imaterialist2019" / "label_descriptions.json")
    assert ls.num_categories == 46 and ls.num_attributes == 92 and ls.num_classes == 47
    assert ls.category_names[0] == "shirt, blouse" and ls.category_names[31] == "sleeve"
    assert ls.categories[45]["supercategory"] == "decorations"


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


# ------------------------------------------------------------------ fuzzing (docs/RELIABILITY.md)
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from conftest import fuzz_sizes  # noqa: E402


def reference_class_id(value):
    """(category, attributes) of a well-formed ClassId, or None."""
    s = (value if isinstance(value, str) else str(value)).strip()
    parts = s.split("_")
    if not all(p and len(p) <= 6 and all(c in "0123456789" for c in p) for p in parts):
        return None
    cat, attrs = int(parts[0]), tuple(int(p) for p in parts[1:])
    if cat >= 46 or any(a >= 92 for a in attrs) or len(set(attrs)) != len(attrs):
        return None
    return cat, attrs


@st.composite
def class_ids(draw):
    kind = draw(st.integers(0, 4))
    if kind <= 1:  # ids joined by "_", some out of range / repeated / empty / padded
        ids = draw(st.lists(st.one_of(st.integers(0, 100), st.integers(0, 10**8)), min_size=1, max_size=6))
        text = "_".join(draw(st.sampled_from(["{}", "0{}", " {}", "{}\t", "+{}", "-{}", "{}.0", ""])).format(i)
                        if draw(st.integers(0, 5)) == 0 else str(i) for i in ids)
        return text
    if kind == 2:
        return draw(st.text(alphabet="0123456789_ -+x\u0663\uff11\n", max_size=16))
    if kind == 3:
        return draw(st.text(max_size=16))
    return draw(st.one_of(st.integers(-5, 100), st.floats(allow_nan=True), st.none(), st.binary(max_size=4)))


@pytest.mark.parametrize("n", fuzz_sizes())
def test_fuzz_class_id_parser_returns_known_ids_or_a_value_error(n):
    """Generated ClassIds: a well-formed one parses to in-range ids and formats back to itself (attributes
    sorted); anything else raises ValueError naming the ClassId. No other exception."""
    seen = {"valid": 0, "rejected": 0}

    @settings(max_examples=n, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(class_ids())
    def check(value):
        want = reference_class_id(value)
        try:
            got = labels.parse_class_id(value)
        except ValueError as e:
            assert want is None, f"valid ClassId {value!r} rejected: {e}"
            assert str(e).startswith("ClassId ")
            seen["rejected"] += 1
        else:
            assert want is not None and got == want, (value, got)
            cat, attrs = got
            assert 0 <= cat < 46 and all(0 <= a < 92 for a in attrs)
            assert labels.parse_class_id(labels.format_class_id(cat, attrs)) == (cat, tuple(sorted(attrs)))
            seen["valid"] += 1

    check()
    assert seen["valid"] + seen["rejected"] >= n
    assert seen["valid"] >= n // 20 and seen["rejected"] >= n // 4, seen
    print(f"ClassId parser fuzz: {seen}")
