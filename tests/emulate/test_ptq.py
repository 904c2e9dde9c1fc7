"""PTQ algorithms as weight schemes (precal.emulate.ptq): GPTQ, AWQ, SmoothQuant.

GPTQ is checked against a straightforward implementation of the paper's Algorithm 1
written here (one column at a time, no lazy batching), against round to nearest when the
Hessian gives no error feedback, and by the layer output error it is meant to lower.
"""

import pytest
import torch
from torch import nn

from precal.emulate import (
    WEIGHT_SCHEMES,
    QuantConfig,
    awq_scales,
    awq_search,
    emulate_model,
    gptq_quantize,
    parse_config,
    quantize,
    smoothquant_scales,
)


def _rtn(w, bits=4, group=None, symmetric=True):
    return quantize(w, f"int{bits}", axis=0, group_size=group, symmetric=symmetric, scale_rule="half_range")


def _correlated_inputs(rows=2048, d=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) / d ** 0.5
    scale = torch.logspace(-1, 1, d)[torch.randperm(d, generator=g)]  # channels of very different size
    return (torch.randn(rows, d, generator=g) @ mix + 0.1 * torch.randn(rows, d, generator=g)) * scale


def _linear(w, bias=False):
    layer = nn.Linear(w.shape[1], w.shape[0], bias=bias)
    with torch.no_grad():
        layer.weight.copy_(w)
    return layer


# ---------------------------------------------------------------- GPTQ: reference implementation


def reference_gptq(W, H, bits, group=None, damp=0.01, act_order=False):
    """The paper's Algorithm 1, column by column, float64, symmetric half-range int scales."""
    W = W.double().clone()
    H = H.double().clone()
    n = W.shape[1]
    qmax, qmin = 2 ** (bits - 1) - 1, -(2 ** (bits - 1))

    def scale_of(block):  # float32 scale, as the emulator's quantizer computes it
        amax = block.abs().amax(1, keepdim=True).float()
        s = amax / ((qmax - qmin) / 2)
        return torch.where(s > 0, s, torch.ones_like(s))

    def q(w, s):
        # times the float32 1/s, as torch.fake_quantize_* do: a group's largest magnitude lands
        # on a tie (±7.5 for int4) whose side depends on this detail
        return torch.clamp(torch.round(w * (1.0 / s).double()), qmin, qmax) * s.double()

    if group is None:
        s = scale_of(W)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    static = act_order and group is not None
    if static:
        statics = [scale_of(W[:, i:i + group]) for i in range(0, n, group)]
    perm = torch.arange(n)
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True, stable=True)
        W, H = W[:, perm], H[perm][:, perm]
    H = H + damp * torch.diag(H).mean() * torch.eye(n, dtype=H.dtype)
    U = torch.linalg.cholesky(torch.linalg.inv(H), upper=True)
    Q = torch.zeros_like(W)
    for j in range(n):
        if group is not None:
            if static:
                s = statics[int(perm[j]) // group]
            elif j % group == 0:
                s = scale_of(W[:, j:j + group])
        Q[:, j:j + 1] = q(W[:, j:j + 1], s)
        err = (W[:, j] - Q[:, j]) / U[j, j]
        W[:, j:] -= torch.outer(err, U[j, j:])
    return Q[:, torch.argsort(perm)]


@pytest.mark.parametrize("group,block,act_order", [
    (None, 128, False), (None, 128, True), (128, 128, False), (32, 128, False), (32, 48, False),
    (64, 40, False), (16, 40, False), (8, 128, False), (32, 128, True), (128, 64, True),
])
def test_gptq_matches_a_column_by_column_reference_of_algorithm_1(group, block, act_order):
    """Lazy batching (any block size, groups starting inside a block) changes nothing but rounding."""
    X = _correlated_inputs(rows=512, d=256)
    W = torch.randn(48, 256, generator=torch.Generator().manual_seed(1))
    H = 2 * X.double().t() @ X.double() / X.shape[0]
    expected = reference_gptq(W, H, 4, group=group, act_order=act_order)
    got = gptq_quantize(W.double(), H, "int4", group_size=group, block_size=block, act_order=act_order)
    assert got.dtype == torch.float64
    assert (got - expected).abs().max() < 1e-5
    # the float32 path the emulator runs: a rounding tie (each group's largest magnitude lands
    # on ±7.5) may go the other way and the error feedback then takes another course, so
    # compare the layer output error it reaches, not the weights
    got32 = gptq_quantize(W, H.float(), "int4", group_size=group, block_size=block, act_order=act_order)
    err32 = float((X.double() @ (W.double() - got32.double()).t()).norm())
    err64 = float((X.double() @ (W.double() - expected).t()).norm())
    assert abs(err32 / err64 - 1) < 0.05


@pytest.mark.parametrize("group", [None, 32, 128])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_without_error_feedback_is_round_to_nearest_bit_for_bit(group, symmetric, act_order):
    """A diagonal Hessian (identity or not) makes every off-diagonal U_jk zero: nothing fed back."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(32, 256, generator=g)
    W[0, 0] = 6.0
    for H in (torch.eye(256), torch.diag(torch.rand(256, generator=g) + 0.1)):
        got = gptq_quantize(W, H, "int4", group_size=group, symmetric=symmetric, act_order=act_order)
        assert torch.equal(got, _rtn(W, 4, group, symmetric))


def test_gptq_through_emulate_model_with_orthogonal_inputs_is_rtn():
    """Calibration rows = the identity: H = 2 I / n, so GPTQ must give RTN's weights exactly."""
    W = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    model = nn.Sequential(_linear(W, bias=True))
    for name in ("w4a16-g32", "w8a16", "w4a16-g32-asym"):
        gptq = emulate_model(model, name + "-gptq", calibration_data=torch.eye(64), keep_head=False)
        rtn = emulate_model(model, name, keep_head=False)
        assert torch.equal(gptq[0].weight_q, rtn[0].weight_q)
        assert gptq[0].input_scale is None


@pytest.mark.parametrize("config", ["w4a16-gptq", "w4a16-g64-gptq", "w4a16-g64-gptq-actorder", "w3a16-g64-gptq",
                                    "w4a16-g64-asym-gptq"])
def test_gptq_lowers_the_layer_output_error_on_correlated_inputs(config):
    X = _correlated_inputs()
    W = torch.randn(96, 256, generator=torch.Generator().manual_seed(2))
    model = nn.Sequential(_linear(W))
    rtn_name = config.replace("-gptq", "").replace("-actorder", "")
    with torch.no_grad():
        ref = model(X)
        err = {c: float((emulate_model(model, c, calibration_data=X, keep_head=False)(X) - ref).norm())
               for c in (config, rtn_name)}
    assert err[config] < 0.85 * err[rtn_name]


def test_gptq_act_order_option_and_suffix_agree_and_options_merge():
    X = _correlated_inputs(rows=512, d=128)
    model = nn.Sequential(_linear(torch.randn(32, 128, generator=torch.Generator().manual_seed(3))))
    a = emulate_model(model, "w4a16-g32-gptq-actorder", calibration_data=X, keep_head=False)
    b = emulate_model(model, "w4a16-g32-gptq", calibration_data=X, keep_head=False, options={"act_order": True})
    c = emulate_model(model, "w4a16-g32-gptq-actorder", calibration_data=X, keep_head=False,
                      options={"damp": 0.01, "block_size": 128})
    d = emulate_model(model, "w4a16-g32-gptq", calibration_data=X, keep_head=False)
    assert torch.equal(a[0].weight_q, b[0].weight_q) and torch.equal(a[0].weight_q, c[0].weight_q)
    assert not torch.equal(a[0].weight_q, d[0].weight_q)
    assert parse_config("w4a16-g32-gptq-actorder", options={"damp": 0.1}).options == {"act_order": True, "damp": 0.1}
    # a huge damp makes H^-1 nearly diagonal: GPTQ becomes round to nearest, except at
    # rounding ties (w/s within a hair of k + 1/2), which the tiny feedback can tip
    e = emulate_model(model, "w4a16-g32-gptq", calibration_data=X, keep_head=False, options={"damp": 1e8})
    rtn = emulate_model(model, "w4a16-g32", keep_head=False)
    W = model[0].weight.detach()
    scale = W.reshape(32, -1, 32).abs().amax(-1, keepdim=True) / 7.5
    y = (W.reshape(32, -1, 32) * (1 / scale)).reshape(32, 128)
    near_tie = ((y - y.floor()) - 0.5).abs() < 1e-4
    differ = e[0].weight_q != rtn[0].weight_q
    assert not (differ & ~near_tie).any()


def test_gptq_dead_inputs_are_zeroed_and_conv_layers_work():
    X = _correlated_inputs(rows=512, d=64)
    X[:, 5] = 0.0  # an input that is always zero
    W = torch.randn(8, 64, generator=torch.Generator().manual_seed(4))
    em = emulate_model(nn.Sequential(_linear(W)), "w4a16-gptq", calibration_data=X, keep_head=False)
    assert torch.isfinite(em[0].weight_q).all() and (em[0].weight_q[:, 5] == 0).all()

    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1)).eval()
    x = torch.randn(16, 8, 1, 1) * torch.randn(1, 8, 1, 1).abs() * 3
    x = (x + torch.randn(16, 8, 12, 12) * 0.3).cumsum(dim=3)  # spatially correlated
    with torch.no_grad():
        ref = conv(x)
        errs = {c: float((emulate_model(conv, c, calibration_data=x, keep_head=False)(x) - ref).norm())
                for c in ("w4a16", "w4a16-gptq")}
    assert errs["w4a16-gptq"] < errs["w4a16"]


def test_gptq_refuses_an_indefinite_hessian_and_float_formats():
    H = torch.zeros(8, 8)
    H[0, 1] = H[1, 0] = 1.0  # zero diagonal entries are "dead", the rest indefinite
    H[2, 2] = 1.0
    H[2, 3] = H[3, 2] = 5.0
    H[3, 3] = 1.0
    with pytest.raises(ValueError, match="damp"):
        gptq_quantize(torch.randn(4, 8), H, "int4", damp=0.0)
    with pytest.raises(ValueError, match="integer formats"):
        QuantConfig("x", weight_format="fp8_e4m3", weight_scheme="gptq")
    with pytest.raises(ValueError, match="group_size"):
        gptq_quantize(torch.randn(4, 8), torch.eye(8), "int4", group_size=3)


def _tiny_bert(seed=0):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=200, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=128, max_position_embeddings=32)
    return transformers.BertModel(cfg).eval()


def test_gptq_and_awq_end_to_end_on_a_tiny_transformers_model():
    model = _tiny_bert()
    g = torch.Generator().manual_seed(0)
    cal = {"input_ids": torch.randint(0, 200, (32, 16), generator=g),
           "attention_mask": torch.ones(32, 16, dtype=torch.long)}
    test = {"input_ids": torch.randint(0, 200, (32, 16), generator=g),
            "attention_mask": torch.ones(32, 16, dtype=torch.long)}
    with torch.no_grad():
        ref = model(**test).last_hidden_state
        err = {}
        for c in ("w4a16-g32", "w4a16-g32-gptq", "w4a16-g32-gptq-actorder", "w4a16-g32-awq"):
            em = emulate_model(model, c, calibration_data=cal, batch_size=8)
            err[c] = float((em(**test).last_hidden_state - ref).norm())
    assert err["w4a16-g32-gptq"] < 0.9 * err["w4a16-g32"]
    assert err["w4a16-g32-gptq-actorder"] < 0.9 * err["w4a16-g32"]
    assert err["w4a16-g32-awq"] <= 1.05 * err["w4a16-g32"]  # AWQ: never worse per layer on calibration rows


# ---------------------------------------------------------------- AWQ


def _salient_inputs(rows=1024, d=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, d, generator=g)
    x[:, :4] *= 20.0  # a few salient input channels
    return x


def test_awq_with_alpha_zero_is_round_to_nearest():
    X = _salient_inputs()
    model = nn.Sequential(_linear(torch.randn(32, 128, generator=torch.Generator().manual_seed(0)), bias=True))
    awq = emulate_model(model, "w4a16-g32-awq", calibration_data=X, keep_head=False, options={"alpha": 0.0})
    rtn = emulate_model(model, "w4a16-g32", keep_head=False)
    assert torch.equal(awq[0].weight_q, rtn[0].weight_q) and awq[0].input_scale is None
    with torch.no_grad():
        assert torch.equal(awq(X), rtn(X))
    assert torch.equal(awq_scales(X.abs().mean(0), 0.0), torch.ones(128))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("config", ["w4a16-g32-awq", "w3a16-awq", "w4a16-g32-asym-awq"])
def test_awq_chosen_alpha_never_raises_the_calibration_error(seed, config):
    X = _salient_inputs(seed=seed) if seed % 2 == 0 else torch.randn(1024, 128,
                                                                     generator=torch.Generator().manual_seed(seed))
    W = torch.randn(32, 128, generator=torch.Generator().manual_seed(seed + 10))
    model = nn.Sequential(_linear(W))
    scheme = WEIGHT_SCHEMES["awq"]
    awq = emulate_model(model, config, calibration_data=X, keep_head=False)
    chosen = scheme.last["0"]
    assert len(chosen["losses"]) == 20 and chosen["losses"][0] >= min(chosen["losses"])
    rtn = emulate_model(model, config.replace("-awq", ""), keep_head=False)
    with torch.no_grad():
        ref = model(X)
        e_awq = float((awq(X) - ref).pow(2).mean())
        e_rtn = float((rtn(X) - ref).pow(2).mean())
    assert e_awq <= e_rtn * (1 + 1e-5)
    if seed % 2 == 0:  # salient channels: AWQ scales them up and wins clearly
        assert chosen["alpha"] > 0 and e_awq < 0.9 * e_rtn
        s = awq[0].input_scale
        assert s[:4].min() > s[4:].max()


def test_awq_search_losses_match_the_formula():
    X = _salient_inputs(rows=256, d=64)
    W = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    x_mean = X.abs().mean(0)
    alpha, s, losses = awq_search(W, X.t() @ X / X.shape[0], x_mean, lambda w: _rtn(w, 4, 16), n_grid=20)
    for i in (0, 7, 19):
        si = x_mean.pow(i / 20).clamp(min=1e-4)
        si = si / (si.max() * si.min()).sqrt()
        out = (X / si) @ _rtn(W * si, 4, 16).t()
        assert losses[i] == pytest.approx(float((out - X @ W.t()).double().pow(2).mean()), rel=1e-4)
    assert losses[int(round(alpha * 20))] == min(losses)


# ---------------------------------------------------------------- SmoothQuant


def _outlier_inputs(rows=512, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, d, generator=g)
    x[:, [3, 17, 40]] *= 60.0  # LLM-style outlier channels
    return x


def test_smoothquant_preserves_the_float_product():
    X = _outlier_inputs()
    W = torch.randn(32, 64, generator=torch.Generator().manual_seed(1))
    for alpha in (0.0, 0.5, 0.8, 1.0):
        s = smoothquant_scales(X.abs().amax(0), W, alpha)
        expected = (X.abs().amax(0).clamp(min=1e-5) ** alpha / W.abs().amax(0).clamp(min=1e-5) ** (1 - alpha))
        assert torch.allclose(s, expected.clamp(min=1e-5), rtol=1e-6)
        assert torch.allclose((X / s) @ (W * s).t(), X @ W.t(), rtol=1e-5, atol=1e-5 * float((X @ W.t()).abs().max()))
    # the emulated layer stores s as its input scale and quantizes W diag(s)
    model = nn.Sequential(_linear(W))
    em = emulate_model(model, "w8a8-sq", calibration_data=X, keep_head=False)
    s = smoothquant_scales(X.abs().amax(0), W, 0.5)
    assert torch.allclose(em[0].input_scale, s)
    assert torch.equal(em[0].weight_q, _rtn(W * s, 8))


def test_smoothquant_on_a_conv_scales_whole_input_channels():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    x = torch.randn(8, 4, 6, 6)
    x[:, 2] *= 40.0
    em = emulate_model(nn.Sequential(conv), "w8a16-sq", calibration_data=x, keep_head=False)
    s = em[0].input_scale
    assert s.shape == (4,)
    W = conv.weight.detach().reshape(6, -1)
    expected = smoothquant_scales(x.abs().amax(dim=(0, 2, 3)), W, 0.5)
    assert torch.allclose(s, expected)
    assert torch.equal(em[0].weight_q.reshape(6, -1), _rtn(W * s.repeat_interleave(9), 8))
    with torch.no_grad():  # the smoothed, quantized conv is close to the float one
        assert float((em(x) - conv(x)).abs().max()) < 0.05 * float(conv(x).abs().max())


@pytest.mark.parametrize("config", ["w8a8", "w8a8-dyn"])
def test_smoothquant_lowers_the_error_of_activation_quantization_with_outlier_channels(config):
    X = _outlier_inputs(seed=0)
    test = _outlier_inputs(seed=1)
    model = nn.Sequential(_linear(torch.randn(32, 64, generator=torch.Generator().manual_seed(2)) * 0.1))
    with torch.no_grad():
        ref = model(test)
        err = {c: float((emulate_model(model, c, calibration_data=X, keep_head=False)(test) - ref).norm())
               for c in (config, config + "-sq")}
    assert err[config + "-sq"] < 0.7 * err[config]


# ---------------------------------------------------------------- bad input


class _NoForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):  # pragma: no cover - must never run
        raise AssertionError("a forward pass ran before the config was refused")


@pytest.mark.parametrize("name,match", [
    ("w4a16-g128-gpt", "unknown suffix 'gpt'"),
    ("w4a16-gptq-awq", "one PTQ algorithm"),
    ("w4a16-awq-actorder", "-actorder is a GPTQ option"),
])
def test_bad_config_names(name, match):
    with pytest.raises(ValueError, match=match):
        parse_config(name)
    with pytest.raises(ValueError, match=match):
        emulate_model(_NoForward(), name, calibration_data=torch.randn(4, 8))


@pytest.mark.parametrize("options,match", [
    ({"dampening": 0.1}, "Unknown option"),
    ({"damp": -1}, "damp"),
    ({"block_size": 0}, "block_size"),
])
def test_bad_gptq_options(options, match):
    with pytest.raises(ValueError, match=match):
        emulate_model(_NoForward(), "w4a16-gptq", calibration_data=torch.randn(4, 8), options=options)


def test_bad_awq_and_smoothquant_options():
    for name, options in (("w4a16-awq", {"alpha": 2.0}), ("w8a8-sq", {"alpha": -0.1}), ("w8a8-sq", {"alpha": None}),
                          ("w4a16-awq", {"n_grid": 0})):
        with pytest.raises(ValueError, match="alpha|n_grid"):
            parse_config(name, options=options)


@pytest.mark.parametrize("name", ["w4a16-g4-gptq", "w4a16-awq", "w8a8-sq"])
def test_ptq_without_calibration_data_is_refused_before_any_forward_pass(name):
    with pytest.raises(ValueError, match="calibration_data"):
        emulate_model(_NoForward(), name, keep_head=False)


# ---------------------------------------------------------------- GPTQ: Hessian pieces


def test_inverse_cholesky_upper_is_the_cholesky_factor_of_the_inverse():
    from precal.emulate.ptq import inverse_cholesky_upper

    X = _correlated_inputs(rows=400, d=96).double()
    H = X.t() @ X / 400 + 1e-3 * torch.eye(96, dtype=torch.float64)
    U = inverse_cholesky_upper(H)
    assert torch.equal(U, U.triu()) and (torch.diag(U) > 0).all()
    assert torch.allclose(U.t() @ U, torch.linalg.inv(H), rtol=1e-8, atol=1e-8 * float(torch.linalg.inv(H).abs().max()))
    # the classical route (inverse, then its upper Cholesky factor) gives the same factor
    assert torch.allclose(U, torch.linalg.cholesky(torch.linalg.inv(H), upper=True), rtol=1e-7, atol=1e-9)
    indefinite = torch.diag(torch.tensor([1.0, -1.0, 2.0], dtype=torch.float64))
    assert inverse_cholesky_upper(indefinite) is None


class _ThreeHeads(nn.Module):
    """Three linear layers reading one input tensor (as q/k/v), then one reading another."""

    def __init__(self, d=64, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.o = nn.Linear(d, d)

    def forward(self, x):
        return self.o(self.q(x) + self.k(x) * self.v(x))


class _ThreeHeadsInPlace(_ThreeHeads):
    """k reads x after an in-place change: it must not reuse q's product."""

    def forward(self, x):
        a = self.q(x)
        x.mul_(2.0)
        return self.o(a + self.k(x))


def test_gptq_hessians_shared_by_layers_reading_one_tensor_equal_their_own():
    from precal.emulate.ptq import GPTQScheme

    X = _correlated_inputs(rows=256, d=64)
    model = _ThreeHeads()
    scheme = GPTQScheme()
    states = {n: scheme.begin(n, m) for n, m in model.named_children()}
    hooks = [m.register_forward_pre_hook(lambda mod, args, _n=n: scheme.observe(states[_n], args[0]))
             for n, m in model.named_children()]
    with torch.no_grad():
        for batch in X.split(64):
            model(batch)
    for h in hooks:
        h.remove()
    expected = 2 * X.t() @ X
    for n in ("q", "k", "v"):
        assert torch.allclose(states[n]["H"], expected, rtol=1e-5, atol=1e-3) and states[n]["count"] == 256
    assert states["k"]["H"] is not states["q"]["H"]  # own accumulators, one product per batch
    assert not torch.allclose(states["o"]["H"], expected, rtol=1e-2)

    inplace = _ThreeHeadsInPlace()
    states = {n: scheme.begin(n, m) for n, m in inplace.named_children()}
    hooks = [m.register_forward_pre_hook(lambda mod, args, _n=n: scheme.observe(states[_n], args[0]))
             for n, m in inplace.named_children()]
    with torch.no_grad():
        inplace(X.clone())
    for h in hooks:
        h.remove()
    assert torch.allclose(states["q"]["H"], expected, rtol=1e-5, atol=1e-3)
    assert torch.allclose(states["k"]["H"], 4 * expected, rtol=1e-5, atol=4e-3)  # saw 2X, not q's X
