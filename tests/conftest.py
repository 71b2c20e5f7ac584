"""Shared fixtures: paths to the read-only reference data and a tiny synthetic dataset + its prepared set."""
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


def stage_module(script: str):
    """A numbered stage script (e.g. ``"03_train_maskrcnn.py"``) imported as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"stage_{Path(script).stem}", REPO / script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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
def prepared_set(synthetic_data_dir, tmp_path_factory) -> Path:
    """The prepared set of the tiny synthetic set (long side 160, 30% val so both splits are populated)."""
    from lib import prepared

    out = tmp_path_factory.mktemp("prepared") / "prepared"
    prepared.run(prepared.PrepareSettings(
        data_dir=synthetic_data_dir, out_dir=out, long_side=TINY_LONG_SIDE, val_fraction=0.3, seed=0,
        processes=1, progress=False))
    return out


# ------------------------------------------------------------------------------------------------------------
# Reliability tests (docs/RELIABILITY.md): fuzz-run sizes, the `long` marker, and functions that run a stage as
# a subprocess to kill it, cap its file sizes (disk full) or make its output directory read-only.
# ------------------------------------------------------------------------------------------------------------
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

# Generated cases per fuzz target: a short run in the default suite, >= 10,000 in the `long` run.
FUZZ_CI_EXAMPLES = int(os.environ.get("FUZZ_CI_EXAMPLES", "300"))
FUZZ_LONG_EXAMPLES = int(os.environ.get("FUZZ_LONG_EXAMPLES", "10000"))


def fuzz_sizes(ci: int = FUZZ_CI_EXAMPLES, long: int = FUZZ_LONG_EXAMPLES) -> list:
    """``@pytest.mark.parametrize("n", fuzz_sizes())``: the case count of a short run and of a `long` run."""
    return [pytest.param(ci, id=f"n{ci}"), pytest.param(long, id=f"n{long}", marks=pytest.mark.long)]


def pytest_collection_modifyitems(config, items):
    """`long` tests are deselected unless the -m expression names them (``python -m pytest -m long``)."""
    if "long" in (config.getoption("markexpr", "") or ""):
        return
    long_items = [item for item in items if item.get_closest_marker("long")]
    if long_items:
        config.hook.pytest_deselected(items=long_items)
        items[:] = [item for item in items if not item.get_closest_marker("long")]


def stage_env(**extra) -> dict:
    """Environment of a stage run as a subprocess from the repo root (one thread, offline)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1", **extra}


def run_stage(cmd: list, preexec_fn=None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``cmd`` (a list; ``python`` = this interpreter) from the repo root and capture its output."""
    cmd = [sys.executable if c == "python" else str(c) for c in cmd]
    return subprocess.run(cmd, cwd=REPO, env=stage_env(), capture_output=True, text=True, timeout=timeout,
                          preexec_fn=preexec_fn)


def kill_when(cmd: list, ready, delay: float = 0.0, timeout: float = 600, poll: float = 0.005) -> bool:
    """Start ``cmd``, wait until ``ready()`` is true, wait ``delay`` s more, then SIGKILL its process tree.

    Returns True if the kill hit a running process, False if the command had exited by itself first (a
    non-zero exit then raises). Its output goes to a temporary file, shown when it fails.
    """
    import tempfile

    cmd = [sys.executable if c == "python" else str(c) for c in cmd]
    with tempfile.TemporaryFile("w+") as log:
        p = subprocess.Popen(cmd, cwd=REPO, env=stage_env(), stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
        try:
            t0 = time.time()
            while p.poll() is None and not ready():
                if time.time() - t0 > timeout:
                    raise TimeoutError(f"{cmd}: not ready after {timeout} s")
                time.sleep(poll)
            if p.poll() is None and delay:
                time.sleep(delay)
            killed = p.poll() is None
            if killed:
                kill_tree(p.pid)
            p.wait(timeout=60)
        finally:
            if p.poll() is None:
                kill_tree(p.pid)
                p.wait()
        if not killed and p.returncode != 0:
            log.seek(0)
            raise RuntimeError(f"{cmd} failed ({p.returncode}):\n{log.read()[-3000:]}")
    return killed


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid``, its process group and every descendant (torchrun's workers are outside its process
    group), as a preempted machine would."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    tree, todo = [], [pid]
    while todo:
        q = todo.pop()
        tree.append(q)
        todo += children.get(q, [])
    for q in tree:
        try:
            os.kill(q, signal.SIGSTOP)  # freeze first, so nothing spawns or writes while the tree is killed
        except ProcessLookupError:
            pass
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for q in tree:
        try:
            os.kill(q, signal.SIGKILL)
        except ProcessLookupError:
            pass


def file_size_limit(nbytes: int):
    """``preexec_fn``: no file can grow past ``nbytes`` (writes fail with EFBIG, like a full disk)."""
    import resource

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() returns EFBIG instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))

    return limit


def without_root_override():
    """``preexec_fn``: as root, drop CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH so directory modes bind root too."""
    import ctypes

    def drop():
        if os.geteuid() == 0:
            libc = ctypes.CDLL(None, use_errno=True)
            for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
                if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP; takes effect at exec
                    raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")

    return drop


def read_only_dirs_work(tmp_path: Path) -> bool:
    """Whether a mode-0555 directory refuses writes from a :func:`without_root_override` subprocess here."""
    d = tmp_path / "ro_probe"
    d.mkdir()
    d.chmod(0o555)
    try:
        r = subprocess.run([sys.executable, "-c", f"open({str(d / 'f')!r}, 'w')"], capture_output=True,
                           preexec_fn=without_root_override())
        return r.returncode != 0
    except OSError:
        return False
    finally:
        d.chmod(0o755)


def snapshot_files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}
