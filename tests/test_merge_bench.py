"""bench/merge_bench.py: its smallest run writes a JSON whose ratios and growths are those of the figures it
reports, from two merges that wrote the same file (the figures themselves depend on the machine)."""
import json

import cv2
import numpy as np
import pytest

from bench import merge_bench


def test_unique_png_is_a_valid_png_of_the_same_pixels():
    png = merge_bench._base_pngs(1.0, seed=0, count=1)[0]
    a, b = merge_bench.unique_png(png, 7), merge_bench.unique_png(png, 8)
    assert a != b and len(a) > len(png)
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(a, np.uint8), cv2.IMREAD_UNCHANGED),
                                  cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED))


def test_merge_bench_smallest_run(tmp_path):
    out = tmp_path / "merge.json"
    rep = merge_bench.main(["--images", "4", "8", "12", "--rows", "3", "--png-kb", "0.5", "--shard-size", "2",
                            "--work-dir", str(tmp_path / "w"), "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["rows"] == rep["rows"] and saved["benchmark"] == "merge" and saved["config"]["ranks"] == 2
    assert [r["images"] for r in rep["rows"]] == [4, 8, 12] and [r["rows"] for r in rep["rows"]] == [12, 24, 36]
    for r in rep["rows"]:
        assert r["same_file"] is True  # the streaming merge wrote what the in-memory one did
        assert r["ours_peak_rss_mb"] >= r["start_rss_mb"] > 10 and r["baseline_peak_rss_mb"] > 10
        assert r["ratio"] == pytest.approx(r["baseline_peak_rss_mb"] / r["ours_peak_rss_mb"])
    first, last = rep["rows"][0], rep["rows"][-1]
    for side in ("baseline", "ours"):
        per = (last[f"{side}_peak_rss_mb"] - first[f"{side}_peak_rss_mb"]) / 8
        assert rep[f"{side}_mb_per_image"] == pytest.approx(per)
        assert rep[f"{side}_projected_mb"] == pytest.approx(last[f"{side}_peak_rss_mb"] + per * (4500 - 12))
    assert not list((tmp_path / "w").iterdir())  # the data of each count is removed after it
