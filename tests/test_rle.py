"""lib/rle.py: Kaggle RLE (1-indexed, column-major) encode/decode, strict parsing, pycocotools conversion."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pycocotools import mask as mask_util

from lib import rle


def test_known_answer_column_major_one_indexed():
    m = np.array([[1, 0, 0],
                  [1, 0, 1],
                  [0, 1, 1]], np.uint8)
    # column-major flattening: col0 = 1,1,0  col1 = 0,0,1  col2 = 0,1,1 -> pixels 0,1 | 5 | 7,8 (0-based)
    assert rle.encode(m) == "1 2 6 1 8 2"
    np.testing.assert_array_equal(rle.decode("1 2 6 1 8 2", (3, 3)), m)


def test_known_answer_run_across_columns():
    # a run that continues from the bottom of column 0 into the top of column 1
    m = np.array([[0, 1],
                  [1, 0]], np.uint8)
    assert rle.encode(m) == "2 2"
    np.testing.assert_array_equal(rle.decode("2 2", (2, 2)), m)


def test_empty_and_full():
    assert rle.encode(np.zeros((4, 5), np.uint8)) == ""
    assert rle.decode("", (4, 5)).sum() == 0
    assert rle.encode(np.ones((4, 5), bool)) == "1 20"
    assert rle.decode("1 20", (4, 5)).all()


def test_decode_shape_dtype_and_values():
    d = rle.decode("3 4", (3, 4))
    assert d.shape == (3, 4) and d.dtype == np.uint8
    assert set(np.unique(d)) <= {0, 1}
    assert d.sum() == 4


@pytest.mark.parametrize("bad, why", [
    ("1 2 3", "odd number"),
    ("1 x", "not a non-negative integer"),
    ("1 -2", "not a non-negative integer"),
    ("1.5 2", "not a non-negative integer"),
    ("0 2", "not positive"),
    ("1 0", "not positive"),
    ("5 1 2 1", "not sorted"),
    ("1 3 3 1", "overlap"),
    ("1 3 4 1", "overlap or touch"),
    ("11 3", "past the"),
    ("12 1", None),
])
def test_malformed_strings_raise(bad, why):
    if why is None:  # boundary case: the last pixel is valid
        assert rle.decode(bad, (3, 4))[2, 3] == 1
        return
    with pytest.raises(ValueError, match=why):
        rle.decode(bad, (3, 4))


def test_non_string_raises():
    with pytest.raises(ValueError, match="must be a string"):
        rle.parse_runs(None)


def test_wide_mask_uses_word_path_and_matches_loop():
    rng = np.random.default_rng(1)
    for w in (8, 16, 17, 64, 99):
        m = (rng.random((13, w)) < 0.4).astype(np.uint8)
        flat = m.T.ravel()
        ref = []
        i = 0
        while i < flat.size:
            if flat[i]:
                j = i
                while j < flat.size and flat[j]:
                    j += 1
                ref += [i + 1, j - i]
                i = j
            else:
                i += 1
        assert rle.encode(m) == " ".join(map(str, ref))


def test_nonbinary_values_count_as_foreground():
    m = np.array([[0, 2], [7, 0]], np.uint8)
    assert rle.encode(m) == rle.encode(m != 0) == "2 2"


mask_strategy = st.tuples(st.integers(1, 40), st.integers(1, 40)).flatmap(
    lambda hw: arrays(np.uint8, hw, elements=st.integers(0, 1)))


@settings(max_examples=300, deadline=None)
@given(mask_strategy)
def test_roundtrip_and_pycocotools_agree(m):
    s = rle.encode(m)
    np.testing.assert_array_equal(rle.decode(s, m.shape), m)
    coco = mask_util.encode(np.asfortranarray(m))
    assert rle.from_coco(coco) == (s, m.shape)
    np.testing.assert_array_equal(mask_util.decode(rle.to_coco(s, m.shape)), m)
    assert rle.area(s) == int(m.sum()) == int(mask_util.area(coco))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 30), st.integers(1, 30), st.data())
def test_roundtrip_from_runs(h, w, data):
    n = h * w
    cuts = sorted(set(data.draw(st.lists(st.integers(0, n), max_size=12))))
    starts, lengths = [], []
    for a, b in zip(cuts[0::2], cuts[1::2]):
        if b > a and (not starts or a > starts[-1] - 1 + lengths[-1]):
            starts.append(a + 1)
            lengths.append(b - a)
    s = " ".join(f"{a} {b}" for a, b in zip(starts, lengths))
    m = rle.decode(s, (h, w))
    assert rle.encode(m) == s


@settings(max_examples=300, deadline=None)
@given(mask_strategy, st.data())
def test_bbox_and_window_from_runs_match_the_decoded_mask(m, data):
    h, w = m.shape
    starts, lengths = rle.encode_runs(m)
    box = rle.runs_bbox(starts, lengths, m.shape)
    ys, xs = np.nonzero(m)
    if not len(ys):
        assert box is None
    else:
        r0, r1, c0, c1 = box
        assert (c0, c1) == (xs.min(), xs.max() + 1)  # columns tight
        assert r0 <= ys.min() and r1 > ys.max()  # rows hold every foreground pixel
        win = rle.decode_window(starts, lengths, m.shape, box)
        np.testing.assert_array_equal(win, m[r0:r1, c0:c1])
        assert win.sum() == m.sum()
    r0 = data.draw(st.integers(0, h))
    r1 = data.draw(st.integers(r0, h))
    c0 = data.draw(st.integers(0, w))
    c1 = data.draw(st.integers(c0, w))
    np.testing.assert_array_equal(rle.decode_window(starts, lengths, m.shape, (r0, r1, c0, c1)), m[r0:r1, c0:c1])


def test_bbox_rows_of_a_run_across_columns_and_window_checks():
    m = np.zeros((6, 4), np.uint8)
    m[2:4, 1] = 1
    assert rle.runs_bbox(*rle.encode_runs(m), m.shape) == (2, 4, 1, 2)
    m[5, 1] = m[0, 2] = 1  # one run from the bottom of column 1 to the top of column 2
    assert rle.runs_bbox(*rle.encode_runs(m), m.shape) == (0, 6, 1, 3)
    with pytest.raises(ValueError, match="not inside"):
        rle.decode_window(*rle.encode_runs(m), m.shape, (0, 7, 0, 4))


def test_uncompressed_coco_counts():
    m = np.zeros((5, 6), np.uint8)
    m[1:4, 2:5] = 1
    s = rle.encode(m)
    counts = mask_util.frPyObjects(  # uncompressed -> compressed roundtrip through our converter
        {"size": [5, 6], "counts": [11, 3, 2, 3, 2, 3, 6]}, 5, 6)
    assert rle.from_coco({"size": [5, 6], "counts": [11, 3, 2, 3, 2, 3, 6]})[0] == s
    assert rle.from_coco(counts)[0] == s


# ------------------------------------------------------------------ fuzzing (docs/RELIABILITY.md)
from conftest import fuzz_sizes  # noqa: E402

_WS = " \t\r\n"


def reference_decode(s: str, shape: tuple[int, int]) -> np.ndarray | None:
    """Straightforward reading of the RLE grammar: the mask, or None when the string or shape is invalid."""
    h, w = shape
    if not (isinstance(h, int) and isinstance(w, int) and h >= 0 and w >= 0):
        return None
    if any(c not in "0123456789" + _WS for c in s):
        return None
    toks = [t for t in "".join(" " if c in _WS else c for c in s).split(" ") if t]
    if any(len(t) > 15 for t in toks) or len(toks) % 2:
        return None
    vals = [int(t) for t in toks]
    flat = np.zeros(h * w, np.uint8)
    end = 0  # exclusive end of the previous run, 1-indexed
    for start, length in zip(vals[0::2], vals[1::2]):
        if start < 1 or length < 1 or start <= end or start + length - 1 > h * w:
            return None
        flat[start - 1:start - 1 + length] = 1
        end = start + length
    return flat.reshape(w, h).T


def _runs_text(draw, n_pixels):
    """A mostly-valid run list over ``n_pixels``, then mutated, joined with random whitespace."""
    cuts = sorted(set(draw(st.lists(st.integers(0, n_pixels + 2), max_size=10))))
    vals = []
    for a, b in zip(cuts[0::2], cuts[1::2]):
        vals += [a + 1, b - a]
    if vals and draw(st.booleans()):
        i = draw(st.integers(0, len(vals) - 1))
        vals[i] = draw(st.sampled_from([0, -1, vals[i] + 1, vals[i] - 1, 10**15, 10**16, 2**63]))
    if vals and draw(st.integers(0, 4)) == 0:
        vals.pop(draw(st.integers(0, len(vals) - 1)))  # odd count
    if len(vals) >= 4 and draw(st.integers(0, 4)) == 0:
        vals[0:2], vals[2:4] = vals[2:4], vals[0:2]  # unsorted
    seps = draw(st.lists(st.sampled_from([" ", "  ", "\t", "\r\n", "\n", "\x0b", "\xa0", ",", "  "]),
                         min_size=len(vals) + 1, max_size=len(vals) + 1))
    return seps[0] + "".join(str(v) + sep for v, sep in zip(vals, seps[1:]))


@st.composite
def rle_cases(draw):
    shape = draw(st.one_of(st.tuples(st.integers(0, 24), st.integers(0, 24)),
                           st.tuples(st.integers(-3, 3), st.integers(-3, 30))))
    n = max(shape[0], 0) * max(shape[1], 0)
    kind = draw(st.integers(0, 3))
    if kind <= 1:
        text = _runs_text(draw, n)
    elif kind == 2:
        text = draw(st.text(alphabet="0123456789 \t\r\n-+.e_x\x00", max_size=40))
    else:
        text = draw(st.text(max_size=30))
    return text, shape


def test_fuzz_reference_decoder_agrees_on_known_cases():
    assert reference_decode("1 2 6 1 8 2", (3, 3)).sum() == 5
    assert reference_decode("1 2 3 1", (3, 3)) is None  # touching runs
    assert reference_decode("1\x0b2", (3, 3)) is None
    np.testing.assert_array_equal(reference_decode("2 2", (2, 2)), rle.decode("2 2", (2, 2)))


@pytest.mark.parametrize("n", fuzz_sizes())
def test_fuzz_decoder_returns_the_right_mask_or_a_value_error(n):
    """Generated strings and shapes: a valid one decodes to the reference mask (and re-encodes to the same
    runs); anything else raises ValueError with a message. No other exception, no wrong mask, no hang."""
    import time as _time

    seen = {"valid": 0, "rejected": 0}

    @settings(max_examples=n, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(rle_cases())
    def check(case):
        text, shape = case
        want = reference_decode(text, shape)
        t0 = _time.perf_counter()
        try:
            got = rle.decode(text, shape)
        except ValueError as e:
            assert want is None, f"valid {text!r} at {shape} rejected: {e}"
            assert str(e)
            seen["rejected"] += 1
        else:
            assert want is not None, f"invalid {text!r} at {shape} decoded to a mask"
            assert got.shape == tuple(shape) and got.dtype == np.uint8
            np.testing.assert_array_equal(got, want)
            assert rle.decode(rle.encode(got), shape).tolist() == got.tolist()
            seen["valid"] += 1
        assert _time.perf_counter() - t0 < 5.0

    check()
    assert seen["valid"] + seen["rejected"] >= n
    assert seen["valid"] >= n // 20 and seen["rejected"] >= n // 4, seen  # both outcomes are exercised
    print(f"rle decoder fuzz: {seen}")
