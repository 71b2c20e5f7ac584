"""Shared fixtures: paths to the read-only reference data and a tiny synthetic dataset + 01 cache."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports smp/timm/huggingface_hub

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
REAL_TRAIN = SHARED_DATA / "real_samples" / "imaterialist2019_train"
REAL_TEST = SHARED_DATA / "real_samples" / "imaterialist2019_test"
REAL_LABELS = SHARED_DATA / "imaterialist2019" / "label_descriptions.json"
FASHIONPEDIA = SHARED_DATA / "real_samples" / "fashionpedia_sample"

# Tiny synthetic set used across the suite (CPU, seconds to make).
TINY = dict(n_train=10, n_test=3, seed=0, min_side=160, max_side=256)
TINY_LONG_SIDE = 160


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data from the repo root (read-only real reference files), or skip."""
    if not REAL_LABELS.exists():
        pytest.skip(f"reference data not found at {SHARED_DATA} (../shared/data beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory) -> Path:
    """A tiny synthetic dataset in the exact Kaggle layout."""
    from lib import synthetic

    d = tmp_path_factory.mktemp("synthetic") / "data"
    synthetic.generate_dataset(d, progress=False, **TINY)
    return d


@pytest.fixture(scope="session")
def prepared_cache(synthetic_data_dir, tmp_path_factory) -> Path:
    """01 cache of the tiny synthetic set (long side 160, 30% val so both splits are populated)."""
    from lib import prepare

    out = tmp_path_factory.mktemp("prepared") / "prepared"
    prepare.prepare_dataset(synthetic_data_dir, out, long_side=TINY_LONG_SIDE, val_fraction=0.3, seed=0,
                            workers=1, progress=False)
    return out
