"""streaming.StreamingI3D: streamed output == whole-video output, for every length, chunking, endpoint."""
import random

import pytest
import torch

from streaming import LengthMismatch, StreamingI3D, run_stream
from pytorch_i3d import VALID_ENDPOINTS, final_avg_pool

CONV_ENDPOINTS = VALID_ENDPOINTS[:VALID_ENDPOINTS.index("Mixed_5c") + 1]
CHUNKS = (1, 3, 8, 13, 64, 512, "random")
CLASSES = 7


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


@pytest.fixture(scope="module")
def models(random_i3d):
    plain = random_i3d(seed=0, num_classes=CLASSES)
    return {"plain": plain, "fast": plain.for_inference("fp32")}


def split(x: torch.Tensor, chunk, rng: random.Random) -> list[torch.Tensor]:
    """x cut on time into pieces of `chunk` frames, or of random sizes (0 included)."""
    if chunk != "random":
        return list(x.split(chunk, dim=2))
    pieces, t = [], 0
    while t < x.shape[2]:
        n = rng.choice([0, 1, 2, 5, 9, 16, 31])
        pieces.append(x[:, :, t:t + n])
        t += n
    return pieces


def video(t: int, b: int = 1, h: int = 16, w: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1000 + t)
    return torch.rand(b, 3, t, h, w, generator=g) * 2 - 1


def assert_close(out: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    assert out.shape == ref.shape, (what, out.shape, ref.shape)
    assert out.dtype == ref.dtype, (what, out.dtype, ref.dtype)
    scale = ref.abs().max().item()
    assert scale > 1e-3, (what, "reference is all ~0: the test would be empty")
    err = (out - ref).abs().max().item()
    assert err <= 1e-5 * scale, (what, err, scale)


def fast_endpoints(fast, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every endpoint of the fast model's own whole-video forward, as float32."""
    out = {}
    with torch.inference_mode():
        y = x.to(fast.dtype)
        for name, layer in fast.features.named_children():
            y = layer(y)
            out[name] = y.float().contiguous()
    return out


def endpoints(model, x: torch.Tensor) -> dict[str, torch.Tensor]:
    if hasattr(model, "features"):
        return fast_endpoints(model, x)
    with torch.no_grad():
        return model(x, return_endpoints=True)[1]


# All lengths 1..40 (SAME padding of every layer in all its phases, T' = 1..5) and longer ones.
LENGTHS = list(range(1, 41)) + [47, 64, 97, 130, 173, 301]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["plain", "fast"])
def test_pooled_every_length(models, kind):
    """head 'pooled' == model.extract_features(whole video), chunk sizes cycled over lengths."""
    model, rng = models[kind], random.Random(0)
    for i, t in enumerate(LENGTHS):
        x = video(t)
        with torch.no_grad():
            ref = model.extract_features(x)
        chunk = CHUNKS[i % len(CHUNKS)]
        if t > 40 and chunk in (1, 3):  # long videos in 1-frame pieces only cost time
            chunk = 16
        assert_close(run_stream(model, split(x, chunk, rng), t), ref, f"{kind} T={t} chunk={chunk}")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["plain", "fast"])
def test_logits(models, kind):
    """head 'logits' == model.forward (final_endpoint Logits): (B, classes, T')."""
    model, rng = models[kind], random.Random(1)
    for t, chunk in [(1, 1), (8, 3), (9, 2), (17, "random"), (40, 7), (71, 13)]:
        x = video(t, seed=1)
        with torch.no_grad():
            ref = model(x)
        out = run_stream(model, split(x, chunk, rng), t, head="logits")
        assert out.shape == (1, CLASSES, max(1, -(-t // 8) - 1))
        assert_close(out, ref, f"{kind} logits T={t}")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["plain", "fast"])
def test_every_endpoint(models, kind):
    """head 'none': every convolutional endpoint's raw map; 'pooled' at an earlier endpoint."""
    model, rng = models[kind], random.Random(2)
    for t, chunk in [(3, 1), (12, "random"), (26, 5)]:
        x = video(t, seed=2)
        ref = endpoints(model, x)
        for ep in CONV_ENDPOINTS:
            out = run_stream(model, split(x, chunk, rng), t, endpoint=ep, head="none")
            assert_close(out, ref[ep], f"{kind} {ep} T={t}")
        out = run_stream(model, split(x, chunk, rng), t, endpoint="Mixed_4f", head="pooled")
        assert_close(out, final_avg_pool(ref["Mixed_4f"]), f"{kind} pooled Mixed_4f T={t}")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["plain", "fast"])
def test_batch_and_frame_size(models, kind):
    """B = 2 at 40x48 (odd SAME padding in space): each push returns only completed steps."""
    model = models[kind]
    x = video(37, b=2, h=40, w=48, seed=3)
    with torch.no_grad():
        ref = model.extract_features(x)
    engine = StreamingI3D(model, 37)
    outs, steps = [], 0
    for piece in x.split(10, dim=2):
        out = engine.push(piece)
        assert out.shape[:2] == (2, 1024) and out.shape[3:] == ref.shape[3:]
        steps += out.shape[2]
        outs.append(out)
    assert steps < ref.shape[2]  # the last steps need the end padding
    outs.append(engine.finish())
    assert_close(torch.cat(outs, dim=2), ref, f"{kind} B=2 40x48")


def test_length_errors(models):
    """More frames than total_frames, or finishing early, raise LengthMismatch with the count."""
    model = models["fast"]
    engine = StreamingI3D(model, 10)
    engine.push(video(6))
    with pytest.raises(LengthMismatch) as e:
        engine.push(video(5))
    assert e.value.seen == 11 and e.value.expected == 10
    assert isinstance(e.value, RuntimeError)
    with pytest.raises(LengthMismatch) as e:
        engine.finish()
    assert e.value.seen == 6
    # The failed push changed nothing: the stream can still be completed exactly.
    x = video(10)
    engine = StreamingI3D(model, 10)
    outs = [engine.push(x[:, :, :6])]
    with pytest.raises(LengthMismatch):
        engine.push(x[:, :, 6:].repeat(1, 1, 2, 1, 1))
    outs += [engine.push(x[:, :, 6:]), engine.finish()]
    with torch.no_grad():
        assert_close(torch.cat(outs, dim=2), model.extract_features(x), "after a refused push")
    with pytest.raises(RuntimeError):
        engine.push(x[:, :, :1])


def test_bad_arguments(models):
    with pytest.raises(ValueError):
        StreamingI3D(models["plain"], 0)
    with pytest.raises(ValueError):
        StreamingI3D(models["plain"], 8, head="softmax")
    with pytest.raises(ValueError):
        StreamingI3D(models["plain"], 8, endpoint="Mixed_4f", head="logits")
    with pytest.raises(ValueError):
        StreamingI3D(models["fast"], 8).push(torch.zeros(1, 2, 4, 16, 16))
    engine = StreamingI3D(models["fast"], 8)
    engine.push(torch.zeros(1, 3, 4, 16, 16))
    with pytest.raises(ValueError):
        engine.push(torch.zeros(1, 3, 4, 16, 24))


@pytest.mark.slow
def test_every_length_1_to_301(models):
    """The fast model, head 'pooled', every T in 1..301, chunk sizes 8..512 cycled: equal to
    extract_features of the whole video to 1e-5 relative."""
    model = models["fast"]
    chunks = (8, 13, 32, 100, 512)
    for t in range(1, 302):
        x = video(t, h=16, w=16, seed=5)
        with torch.no_grad():
            ref = model.extract_features(x)
        chunk = chunks[t % len(chunks)]
        assert_close(run_stream(model, list(x.split(chunk, dim=2)), t), ref, f"T={t} chunk={chunk}")


@pytest.mark.slow
@pytest.mark.parametrize("chunk", [8, 512])
def test_every_endpoint_chunk_sizes(models, chunk):
    """Every endpoint of the fast model, raw map and pooled, at the smallest and largest chunk."""
    model = models["fast"]
    x = video(61, seed=6)
    ref = endpoints(model, x)
    for ep in CONV_ENDPOINTS:
        assert_close(run_stream(model, list(x.split(chunk, dim=2)), 61, endpoint=ep, head="none"), ref[ep], ep)
    assert_close(run_stream(model, list(x.split(chunk, dim=2)), 61, endpoint="Mixed_4c"),
                 final_avg_pool(ref["Mixed_4c"]), "pooled Mixed_4c")


@pytest.mark.slow
def test_closing_the_decode_thread_early_does_not_abort_the_process():
    """A job stopped while background()'s thread is inside OpenCV (Ctrl-C during decoding) exits
    at once: the thread must have left OpenCV by then, or the interpreter's exit tears it down
    there and the process aborts ("FATAL: exception not rethrown", exit 134, seen 1 in 4 stops
    of predict.py)."""
    import subprocess
    import sys
    from pathlib import Path

    script = ("import sys, numpy as np, cv2\n"
              "from streaming import background\n"
              "big = np.random.default_rng(0).integers(0, 255, (3000, 3000, 3), dtype=np.uint8)\n"
              "def items():\n"
              "    while True:\n"
              "        yield cv2.GaussianBlur(big, (31, 31), 0)[:1, :1]  # ~0.2 s in OpenCV, GIL released\n"
              "it = background(items())\n"
              "next(it)\n"
              "it.close()\n"
              "sys.exit(0)\n")
    r = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parent.parent,
                       capture_output=True, text=True, timeout=120)  # without the join: aborted 5 times in 5
    assert r.returncode == 0 and "FATAL" not in r.stderr, (r.returncode, r.stderr[-500:])
