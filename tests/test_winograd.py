"""winograd.py: temporal Winograd equals the direct convolution to float rounding, and the fast
model built on it equals the plain model, streamed or whole, whatever the chunking."""
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

import winograd
from pytorch_i3d import same_padding
from streaming import run_stream
from winograd import TILE, PolyphaseWinograd, TemporalWinograd, transforms

pytestmark = pytest.mark.usefixtures("one_thread")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("taps", [3, 4])
def test_transforms_compute_the_correlation_exactly(taps):
    """sum_j AT[r][j] (G g)_j (BT d)_j == sum_k g_k d_{r+k} in exact fractions."""
    bt, g_mat, at = transforms(taps)
    span = TILE + taps - 1
    d = [Fraction(3 * i * i - 7 * i + 2, i + 1) for i in range(span)]
    g = [Fraction(5 - 2 * k, 3 + k) for k in range(taps)]
    u = [sum(bt[j][i] * d[i] for i in range(span)) for j in range(span)]
    v = [sum(g_mat[j][k] * g[k] for k in range(taps)) for j in range(span)]
    for r in range(TILE):
        assert sum(at[r][j] * u[j] * v[j] for j in range(span)) == sum(g[k] * d[r + k] for k in range(taps))


def direct(x, w, b, padding, stride=(1, 1, 1)):
    return F.conv3d(x.double(), w.double(), b.double(), stride, padding).float()


@pytest.mark.parametrize("length", [3, 4, 5, 6, 7, 9, 13, 18])
@pytest.mark.parametrize("batch", [1, 2])
def test_3x3x3_equals_direct(length, batch):
    g = torch.Generator().manual_seed(length * 10 + batch)
    x = torch.rand(batch, 16, length, 12, 11, generator=g).contiguous(memory_format=torch.channels_last_3d)
    w = torch.randn(24, 16, 3, 3, 3, generator=g) / 12
    b = torch.randn(24, generator=g)
    got = TemporalWinograd(w, b, (1, 1))(x)
    ref = direct(x, w, b, (0, 1, 1))
    assert got.shape == ref.shape == (batch, 24, length - 2, 12, 11)
    assert got.is_contiguous(memory_format=torch.channels_last_3d)
    assert rel(got, ref) < 1e-5


@pytest.mark.parametrize("frames", [1, 2, 7, 8, 9, 16, 23])
@pytest.mark.parametrize("size", [(15, 15), (16, 13)])
def test_polyphase_stem_equals_direct(frames, size):
    """The 7x7x7 stride-2 stem with TF 'SAME' padding in time and space (odd and even sizes)."""
    g = torch.Generator().manual_seed(frames)
    x = torch.rand(1, 3, frames, *size, generator=g) * 2 - 1
    w = torch.randn(8, 3, 7, 7, 7, generator=g) / 30
    b = torch.randn(8, generator=g)
    pads = [same_padding(n, 7, 2) for n in (frames, *size)]
    got = PolyphaseWinograd(w, b, (2, 2))(x, *pads)
    padded = F.pad(x, (*pads[2], *pads[1], *pads[0]))
    ref = direct(padded, w, b, 0, (2, 2, 2))
    assert got.shape == ref.shape
    assert rel(got, ref) < 1e-5


@pytest.fixture()
def winograd_everywhere(monkeypatch):
    """Winograd on every frame size (the tests' frames are small)."""
    monkeypatch.setattr(winograd, "MIN_PIXELS", 0)


@pytest.mark.slow
def test_fast_model_streamed_equals_whole_and_plain(winograd_everywhere, random_i3d):
    """With Winograd in every 3x3x3 layer and the stem: streamed == whole-video forward bit for
    bit (tiles fall on the same frames), and both equal the plain model to 1e-4."""
    plain = random_i3d(seed=0, num_classes=7)
    fast = plain.for_inference("fp32")
    assert sum(m.winograd is not None for m in fast.modules() if hasattr(m, "winograd")) == 1 + 1 + 2 * 9
    for t, chunk in [(1, 8), (5, 3), (17, 8), (40, 13), (64, 512), (97, 32)]:
        x = torch.rand(1, 3, t, 32, 32, generator=torch.Generator().manual_seed(t)) * 2 - 1
        with torch.no_grad():
            whole, ref = fast.extract_features(x), plain.extract_features(x)
        streamed = run_stream(fast, list(x.split(chunk, dim=2)), t)
        assert torch.equal(streamed, whole), (t, chunk)
        assert rel(whole, ref) < 1e-4, (t, chunk)


def test_not_used_off_fp32_cpu_or_on_small_frames(random_i3d):
    plain = random_i3d(seed=0, num_classes=7)
    stem = plain.for_inference("fp32").features.Conv3d_1a_7x7
    x = torch.rand(1, 3, 9, 9, 9)  # 81 pixels < MIN_PIXELS
    assert stem.winograd is not None and stem.winograd_conv(x, (3, 3)) is None
    assert stem.winograd_conv(x.double(), (3, 3)) is None
    assert plain.for_inference("fp16").features.Conv3d_1a_7x7.winograd is None
