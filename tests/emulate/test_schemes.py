"""Weight and activation schemes: bit-equality with torch.ao/torchao, per-token dynamic
activations, and the plug-in interfaces later PTQ algorithms use."""

import copy
import warnings

import pytest
import torch
from torch import nn

from precal.emulate import (
    ACT_SCHEMES,
    WEIGHT_SCHEMES,
    ActQuantizer,
    QuantConfig,
    WeightResult,
    WeightScheme,
    emulate_model,
    parse_config,
    register_act_scheme,
    register_weight_scheme,
)


def _weight(out=16, inp=64, seed=0):
    w = torch.randn(out, inp, generator=torch.Generator().manual_seed(seed))
    w[0, 0] = 5.0  # an outlier in one channel
    return w


def _emulated_weight(w, config):
    layer = nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(w)
    return emulate_model(nn.Sequential(layer), config, keep_head=False)[0].weight


def _ao_observer(qscheme, qmin, qmax):
    from torch.ao.quantization.observer import PerChannelMinMaxObserver

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=qscheme, quant_min=qmin, quant_max=qmax)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("symmetric", [True, False])
def test_default_weights_are_bit_equal_to_torch_ao(bits, symmetric):
    """torch.ao's PerChannelMinMaxObserver + fake_quantize_per_channel_affine: the default rule."""
    w = _weight()
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    obs = _ao_observer(torch.per_channel_symmetric if symmetric else torch.per_channel_affine, qmin, qmax)
    obs(w)
    scale, zero = obs.calculate_qparams()
    expected = torch.fake_quantize_per_channel_affine(w, scale.float(), zero.int(), 0, qmin, qmax)
    name = f"w{bits}a16" + ("" if symmetric else "-asym")
    assert torch.equal(_emulated_weight(w, name), expected)


@pytest.mark.parametrize("symmetric", [True, False])
def test_group_weights_are_bit_equal_to_torch_ao_on_group_rows(symmetric):
    w = _weight(8, 256)
    obs = _ao_observer(torch.per_channel_symmetric if symmetric else torch.per_channel_affine, -8, 7)
    rows = w.reshape(-1, 128)  # each group of 128 inputs is one "channel"
    obs(rows)
    scale, zero = obs.calculate_qparams()
    expected = torch.fake_quantize_per_channel_affine(rows, scale.float(), zero.int(), 0, -8, 7).reshape(w.shape)
    name = "w4a16-g128" + ("" if symmetric else "-asym")
    assert torch.equal(_emulated_weight(w, name), expected)


@pytest.mark.parametrize("symmetric", [True, False])
def test_group_weights_are_bit_equal_to_torchao(symmetric):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchao.quantization.quant_primitives import (
                MappingType,
                choose_qparams_affine,
                dequantize_affine,
                quantize_affine,
            )
    except Exception as exc:  # noqa: BLE001 - torchao absent or built for another torch
        pytest.skip(f"torchao unavailable: {exc}")
    w = _weight(8, 256)
    mapping = MappingType.SYMMETRIC if symmetric else MappingType.ASYMMETRIC
    block = (1, 128)
    scale, zero = choose_qparams_affine(w, mapping, block, torch.int8, quant_min=-8, quant_max=7)
    q = quantize_affine(w, block, scale, zero, torch.int8, quant_min=-8, quant_max=7)
    expected = dequantize_affine(q, block, scale, zero, torch.int8, quant_min=-8, quant_max=7)
    got = _emulated_weight(w, "w4a16-g128" + ("" if symmetric else "-asym"))
    if symmetric:
        assert torch.equal(got, expected)
    else:  # torchao keeps a float zero point in its asymmetric path: equal up to float rounding
        assert torch.allclose(got, expected, atol=1e-6)
        assert (got - expected).abs().max() <= 1e-6


def test_qmax_rule_stays_available():
    w = _weight()
    got = _emulated_weight(w, parse_config("w8a16", weight_scale_rule="qmax"))
    scale = w.abs().amax(1, keepdim=True) / 127
    assert torch.equal(got, torch.clamp(torch.round(w * (1 / scale)), -128, 127) * scale)


def test_dynamic_per_token_activations_match_a_per_row_reference():
    """Each token (row of the flattened input) gets s = amax / 127 at run time (vLLM's rule)."""
    torch.manual_seed(0)
    layer = nn.Linear(32, 8)
    x = torch.randn(3, 5, 32) * torch.linspace(0.1, 10, 5)[None, :, None]
    emulated = emulate_model(nn.Sequential(layer), "w8a8-dyn", keep_head=False)  # no calibration data needed
    rows = x.reshape(-1, 32)
    scale = rows.abs().amax(1) / 127
    x_q = torch.fake_quantize_per_channel_affine(rows, scale, torch.zeros(15, dtype=torch.int32), 0, -128, 127)
    assert torch.equal(emulated[0].act(x), x_q.reshape(x.shape))
    w_q = emulated[0].weight_q
    with torch.no_grad():
        assert torch.allclose(emulated(x), nn.functional.linear(x_q.reshape(x.shape), w_q, layer.bias), atol=1e-6)


def test_dynamic_activations_reduce_over_conv_channels():
    conv = nn.Conv2d(4, 2, 1)
    emulated = emulate_model(nn.Sequential(conv), "w8a8-dyn", keep_head=False)
    x = torch.randn(2, 4, 3, 3)
    amax = x.abs().amax(1, keepdim=True)
    expected = torch.clamp(torch.round(x * (1 / (amax / 127))), -128, 127) * (amax / 127)
    assert torch.equal(emulated[0].act(x), expected)


def test_dynamic_beats_static_on_tokens_of_different_scale():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    x = torch.randn(256, 64) * torch.logspace(-1, 1.5, 256)[:, None]
    with torch.no_grad():
        ref = model(x)
        err = {c: float((emulate_model(model, c, calibration_data=x, keep_head=False)(x) - ref).abs().mean())
               for c in ("w8a8", "w8a8-dyn")}
    assert err["w8a8-dyn"] < err["w8a8"]


class RecordingScheme(WeightScheme):
    """Collects the layer inputs it is shown, then quantizes as RTN and smooths by 2."""

    name = "recording"
    needs_inputs = True

    def __init__(self):
        self.seen = {}

    def begin(self, name, layer):
        self.seen[name] = []
        return self.seen[name]

    def observe(self, state, x):
        state.append(x.clone())

    def quantize(self, weight, config, *, group_size, state=None, name=""):
        assert state is self.seen[name] and state  # inputs arrive before quantization
        return WeightResult(weight * 2.0, input_scale=torch.full((weight.shape[1] if weight.dim() == 2 else 1,), 2.0))


def test_weight_scheme_plugin_sees_layer_inputs_and_can_smooth():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
    scheme = RecordingScheme()
    register_weight_scheme("recording", scheme)
    try:
        x = torch.randn(10, 6)
        cfg = QuantConfig("rec", weight_format="int8", weight_scheme="recording")
        emulated = emulate_model(model, cfg, calibration_data=x, batch_size=4)
        assert torch.equal(torch.cat(scheme.seen["0"]), x)  # 3 batches of the first layer's inputs
        with torch.no_grad():
            hidden = torch.relu(model[0](x))
            assert torch.allclose(torch.cat(scheme.seen["2"]), hidden, atol=1e-6)
            # W*2 with inputs / 2: the float model's output
            assert torch.allclose(emulated(x), model(x), atol=1e-5)
        with pytest.raises(ValueError, match="calibration_data"):
            emulate_model(model, cfg)
    finally:
        WEIGHT_SCHEMES.pop("recording", None)
    with pytest.raises(TypeError, match="WeightScheme"):
        register_weight_scheme("x", object())


def test_weight_scheme_inputs_of_a_conv_are_unfolded_patches():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1, stride=2)
    scheme = RecordingScheme()
    register_weight_scheme("recording", scheme)
    try:
        x = torch.randn(2, 2, 5, 5)
        cfg = QuantConfig("rec", weight_format="int8", weight_scheme="recording")
        emulate_model(nn.Sequential(conv), cfg, calibration_data=x)
        rows = scheme.seen["0"][0]
        assert rows.shape == (2 * 9, 18)  # 3x3 output positions per image, 2*3*3 inputs each
        with torch.no_grad():  # rows @ W^T is the convolution
            out = (rows @ conv.weight.reshape(3, -1).t() + conv.bias).reshape(2, 9, 3).permute(0, 2, 1)
            assert torch.allclose(out.reshape(2, 3, 3, 3), conv(x), atol=1e-5)
        depthwise = nn.Conv2d(2, 2, 3, groups=2)
        with pytest.raises(ValueError, match="groups=2"):
            emulate_model(nn.Sequential(depthwise), cfg, calibration_data=x)
    finally:
        WEIGHT_SCHEMES.pop("recording", None)


def test_act_scheme_plugin():
    class Halve(ActQuantizer):
        def forward(self, x):
            return x * 0.5

    register_act_scheme("halve", Halve)
    try:
        layer = nn.Linear(4, 2, bias=False)
        cfg = QuantConfig("h", act_format="int8", act_scheme="halve")
        emulated = emulate_model(nn.Sequential(copy.deepcopy(layer)), cfg)
        x = torch.randn(3, 4)
        with torch.no_grad():
            assert torch.allclose(emulated(x), layer(x) * 0.5, atol=1e-6)
    finally:
        ACT_SCHEMES.pop("halve", None)
    with pytest.raises(TypeError, match="callable"):
        register_act_scheme("x", 3)
