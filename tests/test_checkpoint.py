"""lib/checkpoint.py: saving with a digest, reading with weights_only=True, refusing foreign or tampered files."""
import numpy as np
import pytest
import torch

from conftest import fuzz_sizes
from lib import checkpoint as lcheckpoint


def test_load_checkpoint_rejects_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        lcheckpoint.load_checkpoint(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"\x00not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth.*not a loadable"):
        lcheckpoint.load_checkpoint(tmp_path / "junk.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="list.pth.*a list, expected a dict"):
        lcheckpoint.load_checkpoint(tmp_path / "list.pth")
    torch.save({"model": {}}, tmp_path / "noconfig.pth")
    with pytest.raises(ValueError, match="noconfig.pth.*missing"):
        lcheckpoint.load_checkpoint(tmp_path / "noconfig.pth")
    # a pickled object (code on load) is refused by weights_only=True
    torch.save({"config": {"arch": "unet"}, "model": {}, "evil": _Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="evil.pth.*not a loadable"):
        lcheckpoint.load_checkpoint(tmp_path / "evil.pth")
    # weights that do not fit the config
    from lib.models import default_config

    torch.save({"config": default_config("unet", encoder="resnet18"), "model": {"nope": torch.zeros(1)}},
               tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="bad.pth.*do not match"):
        lcheckpoint.load_checkpoint(tmp_path / "bad.pth")


class _Evil:
    def __reduce__(self):
        return (print, ("this must not run",))


def _small_checkpoint(path):
    from lib.models import default_config

    ckpt = {"format": lcheckpoint.CHECKPOINT_FORMAT, "config": default_config("unet", encoder="resnet18"),
            "model": {"w": torch.randn(64, 8), "b": torch.zeros(8, dtype=torch.bfloat16), "n": torch.tensor(3)},
            "optimizer": {"state": {0: {"step": torch.tensor(2.0), "exp_avg": torch.randn(64, 8)}},
                          "param_groups": [{"lr": 1e-3, "params": [0]}]},
            "epoch": 1, "global_step": 4, "rng": {"torch": torch.get_rng_state()}, "labels": ["a", "b"]}
    lcheckpoint.save_checkpoint(path, ckpt)
    return path


@pytest.mark.parametrize("n", fuzz_sizes())
def test_fuzz_tampered_checkpoints_fail_safely(n, tmp_path):
    """Random byte edits, block overwrites and truncations of a saved checkpoint: read_checkpoint either
    returns exactly the saved content or raises ValueError naming the file - never wrong weights, never
    another exception."""
    path = _small_checkpoint(tmp_path / "ck.pth")
    blob = path.read_bytes()
    want = lcheckpoint.state_digest(lcheckpoint.read_checkpoint(path))
    rng = np.random.default_rng(0)
    seen = {"refused": 0, "intact": 0}
    bad = tmp_path / "bad.pth"
    for i in range(n):
        b = bytearray(blob)
        kind = i % 3
        if kind == 0:
            for _ in range(rng.integers(1, 4)):
                b[rng.integers(0, len(b))] = rng.integers(0, 256)
        elif kind == 1:
            pos = rng.integers(0, len(b))
            b[pos:pos + 16] = rng.bytes(16)
        else:
            b = b[: rng.integers(0, len(b))]
        if bytes(b) == blob:
            continue
        bad.write_bytes(bytes(b))
        try:
            got = lcheckpoint.read_checkpoint(bad)
        except ValueError as e:
            assert str(bad) in str(e)
            seen["refused"] += 1
        else:
            assert lcheckpoint.state_digest(got) == want  # the edit hit bytes that do not matter (zip padding)
            seen["intact"] += 1
    assert seen["refused"] + seen["intact"] >= n * 0.99 and seen["refused"] > n * 0.5
    print(f"tampered checkpoints: {seen}")


def test_every_checkpoint_key_is_documented_with_its_type():
    """lib/checkpoint.py's docstring lists each key of CHECKPOINT_KEYS / MID_EPOCH_KEYS (and the digest) as
    ``* ``key`` (type): meaning``; tests/test_engine.py checks real checkpoints hold exactly these keys."""
    import re

    doc = lcheckpoint.__doc__
    listed = re.findall(r"^\* ``(\w+)`` \(([^)]+)\): \S", doc, flags=re.M)
    names = [k for k, _ in listed]
    assert names == [*lcheckpoint.CHECKPOINT_KEYS, *lcheckpoint.MID_EPOCH_KEYS, *lcheckpoint.REFIT_KEYS]
    assert len(set(names)) == len(names) and "``digest`` (str)" in doc
    assert lcheckpoint.CHECKPOINT_FORMAT in doc
