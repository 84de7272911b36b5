"""pytorch_i3d.py: the original pytorch-i3d state dict and outputs (checked against a small
functional re-statement of the original code written here), any length and size, every
endpoint, and the fast inference copy (fp32 exact to 1e-4, bf16 keeps the predictions)."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fast_i3d
import pytorch_i3d
from fast_i3d import resolve_precision
from pytorch_i3d import VALID_ENDPOINTS, InceptionI3d, same_padding

MIXED = ["Mixed_3b", "Mixed_3c", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f", "Mixed_5b", "Mixed_5c"]
ENDPOINT_CHANNELS = {
    "Conv3d_1a_7x7": 64, "MaxPool3d_2a_3x3": 64, "Conv3d_2b_1x1": 64, "Conv3d_2c_3x3": 192,
    "MaxPool3d_3a_3x3": 192, "Mixed_3b": 256, "Mixed_3c": 480, "MaxPool3d_4a_3x3": 480,
    "Mixed_4b": 512, "Mixed_4c": 512, "Mixed_4d": 512, "Mixed_4e": 528, "Mixed_4f": 832,
    "MaxPool3d_5a_2x2": 832, "Mixed_5b": 832, "Mixed_5c": 1024,
}


# ---- helpers ---------------------------------------------------------------------------------

def clip(shape, seed=0) -> torch.Tensor:
    """A random clip in the model's [-1, 1] range."""
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def random_bn_stats(model: InceptionI3d, seed: int = 0) -> InceptionI3d:
    """Random (not identity) batch-norm statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    for bn in model.modules():
        if isinstance(bn, nn.BatchNorm3d):
            n = bn.num_features
            bn.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            bn.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            bn.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            bn.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


def calibrated(model: InceptionI3d, seed: int = 0) -> InceptionI3d:
    """Batch-norm statistics measured on a clip (random gamma/beta), so that every layer's
    activations are O(1) and depend on the input, as in a trained model; with random weights
    and default statistics the activations shrink layer by layer and the bias dominates."""
    random_bn_stats(model, seed)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm3d)]
    for bn in bns:
        bn.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(clip((1, 3, 16, 64, 64), seed))
    for bn in bns:
        bn.momentum = 0.01
    return model.eval()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0).item()


def expected_time(t: int) -> int:
    """T' of the original network: three halvings ('SAME', ceil), then the 2-frame average pool."""
    for _ in range(3):
        t = math.ceil(t / 2)
    return t - min(2, t) + 1


def expected_space(s: int) -> int:
    for _ in range(5):
        s = math.ceil(s / 2)
    return s - min(7, s) + 1


@pytest.fixture(scope="module")
def model() -> InceptionI3d:
    torch.manual_seed(0)
    return calibrated(InceptionI3d())


# ---- the original code's semantics, restated functionally -----------------------------------

def tf_same(size: int, k: int, s: int) -> tuple[int, int]:
    """pytorch-i3d's compute_pad, split as pad // 2 before and the rest after."""
    pad = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
    return pad // 2, pad - pad // 2


def ref_pad(x, k, s):
    (t0, t1), (h0, h1), (w0, w1) = [tf_same(n, kk, ss) for n, kk, ss in zip(x.shape[2:], k, s)]
    return F.pad(x, (w0, w1, h0, h1, t0, t1))


def ref_unit(sd, name, x, k, s=(1, 1, 1)):
    x = F.conv3d(ref_pad(x, k, s), sd[f"{name}.conv3d.weight"], None, s)
    x = F.batch_norm(x, sd[f"{name}.bn.running_mean"], sd[f"{name}.bn.running_var"], sd[f"{name}.bn.weight"],
                     sd[f"{name}.bn.bias"], False, 0.0, 1e-3)
    return F.relu(x)


def ref_pool(x, k, s):
    return F.max_pool3d(ref_pad(x, k, s), k, s)


def ref_mixed(sd, name, x):
    one, three = (1, 1, 1), (3, 3, 3)
    return torch.cat([ref_unit(sd, f"{name}.b0", x, one),
                      ref_unit(sd, f"{name}.b1b", ref_unit(sd, f"{name}.b1a", x, one), three),
                      ref_unit(sd, f"{name}.b2b", ref_unit(sd, f"{name}.b2a", x, one), three),
                      ref_unit(sd, f"{name}.b3b", ref_pool(x, three, one), one)], dim=1)


def reference_i3d(sd, x):
    """(logits (B, C, T'), features (B, 1024, T', 1, 1)) as the original code at 224x224."""
    x = ref_unit(sd, "Conv3d_1a_7x7", x, (7, 7, 7), (2, 2, 2))
    x = ref_pool(x, (1, 3, 3), (1, 2, 2))
    x = ref_unit(sd, "Conv3d_2b_1x1", x, (1, 1, 1))
    x = ref_unit(sd, "Conv3d_2c_3x3", x, (3, 3, 3))
    x = ref_pool(x, (1, 3, 3), (1, 2, 2))
    for name in MIXED:
        if name == "Mixed_4b":
            x = ref_pool(x, (3, 3, 3), (2, 2, 2))
        if name == "Mixed_5b":
            x = ref_pool(x, (2, 2, 2), (2, 2, 2))
        x = ref_mixed(sd, name, x)
    features = nn.AvgPool3d(kernel_size=[2, 7, 7], stride=(1, 1, 1))(x)
    logits = F.conv3d(features, sd["logits.conv3d.weight"], sd["logits.conv3d.bias"])
    return logits.squeeze(3).squeeze(3), features


# ---- the model ------------------------------------------------------------------------------

def test_state_dict_keys_are_the_original_ones():
    m = InceptionI3d()
    sd = m.state_dict()
    assert len(sd) == 344  # 57 conv+bn units x 6 (with num_batches_tracked) + logits weight and bias
    assert len([k for k in sd if not k.endswith("num_batches_tracked")]) == 287
    assert sd["Conv3d_1a_7x7.conv3d.weight"].shape == (64, 3, 7, 7, 7)
    for suffix in ("weight", "bias", "running_mean", "running_var"):
        assert f"Conv3d_1a_7x7.bn.{suffix}" in sd
    for branch, shape in [("b0", (64, 192, 1, 1, 1)), ("b1a", (96, 192, 1, 1, 1)), ("b1b", (128, 96, 3, 3, 3)),
                          ("b2a", (16, 192, 1, 1, 1)), ("b2b", (32, 16, 3, 3, 3)), ("b3b", (32, 192, 1, 1, 1))]:
        assert sd[f"Mixed_3b.{branch}.conv3d.weight"].shape == shape
        assert f"Mixed_3b.{branch}.bn.running_var" in sd
    assert sd["logits.conv3d.weight"].shape == (400, 1024, 1, 1, 1)
    assert sd["logits.conv3d.bias"].shape == (400,)
    assert not any(".b3a." in k for k in sd)  # the max pool branch has no parameters
    bns = [b for b in m.modules() if isinstance(b, nn.BatchNorm3d)]
    assert len(bns) == 57 and all(b.eps == 1e-3 and b.momentum == 0.01 for b in bns)


def test_strict_load_without_num_batches_tracked(model):
    # The published pytorch-i3d .pt files predate num_batches_tracked.
    sd = {k: v.clone() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    fresh = InceptionI3d()
    fresh.load_state_dict(sd, strict=True)
    assert torch.equal(fresh.Mixed_4c.b2b.bn.running_var, model.Mixed_4c.b2b.bn.running_var)
    fresh.load_state_dict(model.state_dict(), strict=True)  # and with it


@pytest.mark.parametrize("size,k,s,expected", [
    (224, 7, 2, (2, 3)), (225, 7, 2, (3, 3)), (112, 3, 2, (0, 1)), (113, 3, 2, (1, 1)), (64, 7, 2, (2, 3)),
    (8, 2, 2, (0, 0)), (7, 2, 2, (0, 1)), (1, 2, 2, (0, 1)), (1, 7, 2, (3, 3)), (28, 3, 1, (1, 1)),
    (16, 1, 1, (0, 0)), (9, 3, 2, (1, 1)),
])
def test_same_padding(size, k, s, expected):
    assert same_padding(size, k, s) == expected == tf_same(size, k, s)
    before, after = expected
    assert (size + before + after - k) // s + 1 == math.ceil(size / s)  # TF 'SAME' output size


@pytest.mark.slow
def test_matches_the_original_code_at_224(model):
    x = clip((1, 3, 16, 224, 224))
    with torch.inference_mode():
        logits, endpoints = model(x, return_endpoints=True)
        features = model.extract_features(x)
        ref_logits, ref_features = reference_i3d(model.state_dict(), x)
    assert logits.shape == ref_logits.shape == (1, 400, 1)
    assert features.shape == ref_features.shape == (1, 1024, 1, 1, 1)
    assert ref_features.abs().mean() > 0.1  # calibrated: the comparison is not of near-zeros
    assert rel_err(features, ref_features) < 1e-5
    assert rel_err(logits - model.logits.conv3d.bias.view(1, -1, 1), ref_logits - model.logits.conv3d.bias.view(1, -1, 1)) < 1e-5
    assert list(endpoints) == list(VALID_ENDPOINTS[:17])
    assert torch.equal(endpoints["Logits"], logits)


@pytest.mark.slow
@pytest.mark.parametrize("t", [1, 7, 8, 9, 64])
def test_any_length(model, t):
    x = clip((2, 3, t, 32, 32), seed=t)
    with torch.inference_mode():
        out, feats = model(x), model.extract_features(x)
    assert out.shape == (2, 400, expected_time(t))
    assert feats.shape == (2, 1024, expected_time(t), 1, 1)
    assert expected_time(t) == max(math.ceil(t / 8) - 1, 1)


@pytest.mark.parametrize("h,w", [(33, 47), (97, 113), (1, 1), (250, 31)])
def test_odd_spatial_sizes(model, h, w):
    with torch.inference_mode():
        feats = model.extract_features(clip((1, 3, 8, h, w)))
        out = model(clip((1, 3, 8, h, w)))
    assert feats.shape == (1, 1024, 1, expected_space(h), expected_space(w))
    assert out.shape == (1, 400, 1)


@pytest.mark.slow
def test_every_final_endpoint_builds_and_runs():
    x = clip((1, 3, 8, 32, 32))
    full_keys = set(InceptionI3d().state_dict())
    for i, name in enumerate(VALID_ENDPOINTS):
        m = InceptionI3d(final_endpoint=name).eval()
        assert set(m.state_dict()) <= full_keys
        with torch.inference_mode():
            out, endpoints = m(x, return_endpoints=True)
        assert list(endpoints) == list(VALID_ENDPOINTS[:i + 1])
        assert out is endpoints[name]
        if name == "Predictions":
            assert out.shape == (1, 400)
            torch.testing.assert_close(out.sum(1), torch.ones(1))
        elif name == "Logits":
            assert out.shape == (1, 400, 1)
        else:
            assert out.shape[:2] == (1, ENDPOINT_CHANNELS[name])
    with pytest.raises(ValueError, match="final_endpoint"):
        InceptionI3d(final_endpoint="Mixed_6a")


@pytest.mark.slow
def test_endpoints_agree_with_partial_models(model):
    x = clip((1, 3, 9, 48, 40))
    partial = InceptionI3d(final_endpoint="Mixed_4c")
    partial.load_state_dict({k: v for k, v in model.state_dict().items() if k in partial.state_dict()}, strict=True)
    with torch.inference_mode():
        _, endpoints = model(x, return_endpoints=True)
        assert torch.equal(partial.eval()(x), endpoints["Mixed_4c"])
        assert torch.equal(model.extract_features(x), pytorch_i3d.final_avg_pool(endpoints["Mixed_5c"]))


def test_dropout_keep_prob_is_a_keep_probability():
    m = InceptionI3d(dropout_keep_prob=1.0).train()
    x = torch.rand(2, 1024, 3, 1, 1)
    assert torch.equal(m.dropout(x), x)  # keep everything even in train mode
    m = InceptionI3d(dropout_keep_prob=0.8).train()
    y = m.dropout(torch.ones(100_000))
    assert abs((y > 0).float().mean().item() - 0.8) < 0.01
    torch.testing.assert_close(y[y > 0], torch.full_like(y[y > 0], 1 / 0.8))
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="dropout_keep_prob"):
            InceptionI3d(dropout_keep_prob=bad)


@pytest.mark.slow
def test_spatial_squeeze_false(model):
    m = InceptionI3d(spatial_squeeze=False)
    m.load_state_dict(model.state_dict())
    x = clip((2, 3, 16, 64, 64))
    with torch.inference_mode():
        out = m.eval()(x)
        assert out.shape == (2, 400, 1, 1, 1)
        torch.testing.assert_close(out[:, :, :, 0, 0], model(x))


@pytest.mark.slow
def test_replace_logits(model):
    m = InceptionI3d()
    m.load_state_dict(model.state_dict())
    m.replace_logits(157)
    assert m.num_classes == 157
    sd = m.state_dict()
    assert sd["logits.conv3d.weight"].shape == (157, 1024, 1, 1, 1) and sd["logits.conv3d.bias"].shape == (157,)
    x = clip((1, 3, 16, 64, 64))
    with torch.inference_mode():
        assert m.eval()(x).shape == (1, 157, 1)
        assert torch.equal(m.extract_features(x), model.extract_features(x))  # the trunk is kept


# ---- fast inference -------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("shape", [(2, 3, 16, 112, 112), (1, 3, 9, 113, 97), (1, 3, 1, 40, 40)])
def test_for_inference_fp32_equals_the_plain_model(model, shape):
    x = clip(shape)
    fast = model.for_inference("fp32")
    assert fast.precision == "fp32" and not fast.training
    with torch.inference_mode():
        ref, ref_feats = model(x), model.extract_features(x)
    out, feats = fast(x), fast.extract_features(x)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert feats.shape == ref_feats.shape and feats.dtype == torch.float32
    assert rel_err(out, ref) < 1e-4
    assert rel_err(feats, ref_feats) < 1e-4
    assert ref_feats.abs().mean() > 0.1


@pytest.mark.slow
def test_for_inference_partial_endpoints_and_options(model):
    x = clip((1, 3, 16, 64, 72))
    for name in ("Conv3d_1a_7x7", "MaxPool3d_3a_3x3", "Mixed_4c", "MaxPool3d_5a_2x2", "Predictions"):
        m = InceptionI3d(final_endpoint=name)
        m.load_state_dict({k: v for k, v in model.state_dict().items() if k in m.state_dict()}, strict=True)
        with torch.inference_mode():
            ref = m.eval()(x)
        out = m.for_inference("fp32")(x)
        assert out.shape == ref.shape
        assert rel_err(out, ref) < 1e-4, name
    m = InceptionI3d(spatial_squeeze=False)
    m.load_state_dict(model.state_dict())
    with torch.inference_mode():
        ref = m.eval()(x)
    out = m.for_inference("fp32")(x)
    assert out.shape == ref.shape == (1, 400, 1, 1, 1) and rel_err(out, ref) < 1e-4


@pytest.mark.slow
def test_for_inference_leaves_the_model_alone_and_takes_any_input(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    fast = model.for_inference("fp32")
    assert model.training
    model.eval()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    x = clip((1, 3, 8, 40, 40))
    out32 = fast(x)
    out64 = fast(x.double())  # another dtype: converted to the model's precision
    assert out64.dtype == torch.float32 and torch.equal(out32, out64.float())
    torch.testing.assert_close(fast(x.contiguous(memory_format=torch.channels_last_3d)), out32)
    assert fast(x[:, :, ::2]).shape == (1, 400, 1)  # a strided view
    with pytest.raises(ValueError, match="expected input"):
        fast(clip((1, 2, 8, 40, 40)))
    assert not any(p.requires_grad for p in fast.parameters())


def test_max_pool_without_padded_copy_is_same_padding():
    for k, s in [((1, 3, 3), (1, 2, 2)), ((3, 3, 3), (2, 2, 2)), ((2, 2, 2), (2, 2, 2))]:
        pool = pytorch_i3d.MaxPool3dSamePadding(kernel_size=list(k), stride=s)
        fast = fast_i3d.FastMaxPool(pool)
        for n in itertools.product((1, 2, 3, 4, 7), repeat=3):
            x = torch.relu(torch.randn(1, 2, *n))  # pools follow a ReLU
            assert torch.equal(fast(x), pool(x)), (k, s, n)


@pytest.mark.bf16
def test_bf16_keeps_predictions_with_random_bn_stats():
    torch.manual_seed(1)
    m = random_bn_stats(InceptionI3d(), seed=1)
    nn.init.zeros_(m.logits.conv3d.bias)  # compare what the network computes, not the bias
    x = clip((2, 3, 16, 112, 112), seed=1)
    with torch.inference_mode():
        ref, ref_feats = m(x), m.extract_features(x)
    fast = m.for_inference("bf16")
    assert fast.precision == "bf16" and fast.features.Mixed_3b.heads.weight.dtype == torch.bfloat16
    out, feats = fast(x), fast.extract_features(x)
    assert out.dtype == torch.float32
    assert cosine(out, ref) > 0.999 and cosine(feats, ref_feats) > 0.999
    assert torch.equal(out.mean(2).argmax(1), ref.mean(2).argmax(1))


@pytest.mark.bf16
def test_bf16_keeps_predictions_with_real_weights(rgb_scratch_weights, sample_videos):
    """DeepMind's rgb_scratch Kinetics weights on 32 frames of a real video."""
    import frame_io
    from weights import load_model
    m = load_model(rgb_scratch_weights, mode="rgb")
    frames = np.stack([frame_io.center_crop(f, 224) for f in
                       itertools.islice(frame_io.iter_frames(sample_videos[0], resize=256), 32)])
    x = torch.from_numpy(frame_io.to_tensor_layout(frame_io.to_model_range(frames)))[None]
    assert x.shape == (1, 3, 32, 224, 224)
    with torch.inference_mode():
        ref = m(x)
    out = m.for_inference("bf16")(x)
    assert cosine(out, ref) > 0.999
    assert out.mean(2).argmax(1).item() == ref.mean(2).argmax(1).item()
    assert rel_err(m.for_inference("fp32")(x), ref) < 1e-4


@pytest.mark.slow
def test_fp16_runs_and_keeps_the_output_close(model):
    # fp16 is for CUDA; on CPU it only has to be right (it is slow there).
    x = clip((1, 3, 8, 32, 32))
    with torch.inference_mode():
        ref = model(x)
    fast = model.for_inference("fp16")
    assert fast.dtype == torch.float16
    assert cosine(fast(x), ref) > 0.999


def test_precision_resolution(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(fast_i3d, "cpu_supports_bf16", lambda: True)
    for p in ("fp32", "bf16", "fp16"):
        assert resolve_precision(p, cpu) == p and resolve_precision(p, cuda) == p
    monkeypatch.undo()
    native = fast_i3d.cpu_has_native_bf16()
    assert resolve_precision("auto", cpu) == ("bf16" if native else "fp32")
    monkeypatch.setattr(fast_i3d, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setattr(fast_i3d, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(fast_i3d, "cpu_supports_bf16", lambda: True)
    assert resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", cuda) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", cuda) == "fp16"
    assert InceptionI3d(final_endpoint="Conv3d_1a_7x7").for_inference("auto").precision == "bf16"


def test_bf16_refused_with_one_line_where_the_cpu_lacks_it(monkeypatch):
    monkeypatch.setattr(fast_i3d, "cpu_supports_bf16", lambda: False)
    with pytest.raises(fast_i3d.PrecisionError, match=r"^bf16 is not supported by this CPU .*: use fp32$"):
        InceptionI3d(final_endpoint="Conv3d_1a_7x7").for_inference("bf16")
    assert resolve_precision("auto", "cpu") == "fp32"  # auto never picks what cannot run


def test_bad_precision_raises_value_error():
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp64", torch.device("cpu"))
    with pytest.raises(ValueError, match="precision"):
        InceptionI3d(final_endpoint="Conv3d_1a_7x7").for_inference("int8")


# ---- benchmark.py ---------------------------------------------------------------------------

@pytest.mark.slow
def test_benchmark_model_section_rows(capsys):
    import json

    import benchmark
    from errors import UserError
    code = benchmark.main(["--only", "model", "--frames", "8", "--size", "32", "--repeat", "1", "--json",
                           "--random-weights"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    rows = {r["row"]: r for r in result["rows"]}
    bf16 = ("for_inference bf16",) if fast_i3d.cpu_supports_bf16() else ()
    assert set(rows) == {f"{m} {p}" for m in ("forward", "extract_features")
                         for p in ("eager fp32", "for_inference fp32", *bf16)}
    for r in rows.values():
        assert r["section"] == "model" and r["unit"] == "s" and r["value"] > 0
        assert r["baseline_value"] == rows[r["baseline_row"]]["value"]
    assert "top-1 same" in rows["forward for_inference fp32"]["note"]
    for method in ("forward", "extract_features"):  # fp32 computes what the plain model does
        assert float(rows[f"{method} for_inference fp32"]["note"].split("cosine ")[1][:8]) >= 0.99999
    table = benchmark.format_table(result["rows"])
    assert "baseline" in table and "forward for_inference fp32" in table
    assert benchmark.ratio({"unit": "s", "value": 1.0, "baseline_value": 3.0}) == 3.0
    assert benchmark.ratio({"unit": "frames/s", "value": 30.0, "baseline_value": 10.0}) == 3.0
    with pytest.raises(UserError, match="unknown section"):
        benchmark.parse_args(["--only", "model,nope"])


def test_separable_inception_max_pool_is_exact():
    pool = pytorch_i3d.MaxPool3dSamePadding(kernel_size=[3, 3, 3], stride=(1, 1, 1))
    separable = fast_i3d.SeparableMaxPool3(pool)
    for shape in [(2, 5, 1, 1, 3), (1, 3, 2, 1, 1), (1, 4, 3, 5, 7), (1, 16, 4, 6, 6)]:
        x = torch.relu(torch.randn(shape))
        for fmt in (torch.contiguous_format, torch.channels_last_3d):
            xf = x.contiguous(memory_format=fmt)
            out = separable(xf)
            assert torch.equal(out, pool(x))
            assert out.is_contiguous(memory_format=fmt)
    assert torch.equal(separable(x.bfloat16()), F.max_pool3d(x.bfloat16(), 3, 1, 1))


# ---- the layers' time contract (what the streaming engine and the fast copy rely on) ---------

def contract_layers() -> dict[str, nn.Module]:
    """One layer of each kind and temporal geometry, plain and fast (direct convolutions)."""
    torch.manual_seed(0)
    layers = {
        "stem 7/2": pytorch_i3d.Unit3D(3, 4, [7, 7, 7], stride=(2, 2, 2)),
        "conv 3/1": pytorch_i3d.Unit3D(3, 4, [3, 3, 3]),
        "pool 3/2": pytorch_i3d.MaxPool3dSamePadding(kernel_size=[3, 3, 3], stride=(2, 2, 2)),
        "pool 2/2": pytorch_i3d.MaxPool3dSamePadding(kernel_size=[2, 2, 2], stride=(2, 2, 2)),
        "pool 1/1": pytorch_i3d.MaxPool3dSamePadding(kernel_size=[1, 3, 3], stride=(1, 2, 2)),
        "inception": pytorch_i3d.InceptionModule(3, [2, 3, 4, 2, 3, 2], "m"),
    }
    for name, layer in list(layers.items()):
        random_bn_stats(layer)
        layers[f"fast {name}"] = layer.accept(fast_i3d.FastLayers)
    return layers


@pytest.mark.parametrize("t", [1, 2, 9, 12])
def test_every_layer_output_from_its_own_window_and_padding(t):
    """layer(x) (pad_t None: TF-'SAME' over the whole video) at output j equals the layer run on
    just the frames output j reads, given the zero frames it reads before / after x as pad_t:
    the time contract (time.pads, time.out_frames, forward(x, pad_t)) the engine builds on."""
    x = torch.relu(clip((1, 3, t, 9, 9)))  # pools follow a ReLU
    for name, layer in contract_layers().items():
        spec = layer.time
        with torch.inference_mode():
            whole = layer(x)
            (front, back), span, s = spec.pads(t), spec.span, spec.stride
            assert whole.shape[2] == spec.out_frames(t), name
            assert layer.out_channels in (None, whole.shape[1]), name
            for j in range(whole.shape[2]):
                lo, hi = j * s - front, j * s - front + span  # output j's window, in x's frames
                pad_t = (max(0, -lo), max(0, hi - t))
                out = layer(x[:, :, max(lo, 0):min(hi, t)], pad_t)
                assert out.shape[2] == 1, (name, j)
                torch.testing.assert_close(out, whole[:, :, j:j + 1], rtol=1e-5, atol=1e-6, msg=f"{name} t={t} j={j}")
