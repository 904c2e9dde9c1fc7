"""Model-level emulation: configs, the caller's model untouched, layers vs references."""

import copy

import pytest
import torch
from torch import nn

from precal.emulate import (
    EmulatedLayer,
    QuantConfig,
    RangeObserver,
    emulate_model,
    fold_batchnorm,
    format_info,
    parse_config,
    quantizable_layers,
    quantize,
)


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.conv1d = nn.Conv1d(16, 16, 1)
        self.fc = nn.Linear(16 * 16, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = nn.functional.max_pool2d(x, 2)  # (n, 16, 4, 4)
        x = self.conv1d(x.flatten(2))  # (n, 16, 16)
        return self.fc(x.flatten(1))


@pytest.fixture
def net():
    torch.manual_seed(0)
    model = SmallNet()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.fixture
def images():
    return torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name, fields", [
    ("fp32", {}),
    ("bf16", {"compute": "bf16"}),
    ("fp8_e4m3", {"compute": "fp8_e4m3"}),
    ("w8a8", {"weight_format": "int8", "act_format": "int8"}),
    ("w4a8", {"weight_format": "int4", "act_format": "int8"}),
    ("w4a4", {"weight_format": "int4", "act_format": "int4"}),
    ("w4a16-g128", {"weight_format": "int4", "weight_group_size": 128, "act_format": None}),
])
def test_parse_config(name, fields):
    cfg = parse_config(name)
    assert cfg.name == name
    for key, value in fields.items():
        assert getattr(cfg, key) == value


@pytest.mark.parametrize("name, match", [
    ("w9a8", "weight bits"), ("w4a1", "activation bits"), ("w4a8-g0", "group size"),
    ("int8", "Unknown config"), ("bogus", "Unknown config"),
])
def test_bad_config_names(name, match):
    with pytest.raises(ValueError, match=match):
        parse_config(name)


def test_bad_config_fields():
    with pytest.raises(ValueError, match="observer"):
        QuantConfig("x", observer="median")
    with pytest.raises(ValueError, match="not an integer format"):
        QuantConfig("x", act_format="bf16")
    with pytest.raises(ValueError, match="Unknown number format"):
        QuantConfig("x", weight_format="int99x")
    with pytest.raises(ValueError, match="weight_scheme"):
        QuantConfig("x", weight_format="int4", weight_scheme="magic")
    with pytest.raises(ValueError, match="act_scheme"):
        QuantConfig("x", act_format="int8", act_scheme="magic")
    with pytest.raises(ValueError, match="group_fallback"):
        QuantConfig("x", weight_format="int4", group_fallback="maybe")
    with pytest.raises(ValueError, match="compute"):
        QuantConfig("x", attention=True)
    with pytest.raises(ValueError, match="signed"):
        QuantConfig("x", act_format="uint8", act_scheme="dynamic")


@pytest.mark.parametrize("config", ["fp32", "bf16", "fp16", "fp8_e4m3", "w8a8", "w4a4", "w4a16-g128"])
def test_callers_model_is_never_modified(net, images, config):
    state = copy.deepcopy(net.state_dict())
    types = {name: type(m) for name, m in net.named_modules()}
    params = [id(p) for p in net.parameters()]
    before = net(images)
    net.train()  # the emulator must not flip the caller's mode either
    emulate_model(net, config, calibration_data=images, group_fallback="channel")
    assert net.training
    net.eval()
    assert {name: type(m) for name, m in net.named_modules()} == types
    assert [id(p) for p in net.parameters()] == params
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert torch.equal(net(images), before)


def test_fp32_config_is_an_exact_copy(net, images):
    with torch.no_grad():
        assert torch.equal(emulate_model(net, "fp32")(images), net(images))


def test_bf16_linear_equals_native_cpu_bf16(images):
    torch.manual_seed(0)
    layer = nn.Linear(64, 32)
    x = torch.randn(128, 64)
    emulated = EmulatedLayer(copy.deepcopy(layer), parse_config("bf16"))
    with torch.no_grad():
        native = nn.functional.linear(x.bfloat16(), layer.weight.bfloat16(), layer.bias.bfloat16()).float()
        ours = emulated(x)
    # Same recipe (bf16 operands, float32 accumulation, one rounding of the output); the
    # kernels may sum in another order, so a rare output rounds to the neighbouring bf16 value.
    differ = ours != native
    assert differ.float().mean() < 0.005
    ulp = torch.ldexp(torch.ones_like(native), torch.frexp(native.abs())[1] - 8)
    assert ((ours - native).abs() <= ulp)[differ].all()


def test_compute_precision_rounds_outputs_to_the_format(net, images):
    emulated = emulate_model(net, "fp16")
    captured = {}
    emulated.fc.register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    with torch.no_grad():
        emulated(images)
    out = captured["out"]
    assert torch.equal(out, out.half().float())


def test_weights_are_quantized_per_channel_after_batchnorm_folding(net):
    emulated = emulate_model(net, "w8a16")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in emulated.modules())
    folded = copy.deepcopy(net)
    fold_batchnorm(folded)
    expected = quantize(folded.conv1.weight.detach(), "int8", axis=0, scale_rule="half_range")
    assert torch.equal(emulated.conv1.weight_q, expected)
    # each output channel uses at most 256 levels of its own scale amax / 127.5 (torch.ao's rule)
    w = emulated.conv2.weight_q
    scale = folded.conv2.weight.detach().abs().flatten(1).amax(1) / 127.5
    codes = w.flatten(1) / scale[:, None]
    assert torch.allclose(codes, codes.round(), atol=1e-4)


def test_fold_batchnorm_preserves_outputs(net, images):
    folded = copy.deepcopy(net)
    pairs = fold_batchnorm(folded)
    assert pairs == [("conv1", "bn1"), ("conv2", "bn2")]
    with torch.no_grad():
        assert torch.allclose(folded(images), net(images), atol=1e-5)


def test_untraceable_model_warns_and_skips_folding():
    class Dynamic(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.bn = nn.BatchNorm2d(2)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
                return self.bn(self.conv(x))
            return self.conv(x)

    with pytest.warns(RuntimeWarning, match="could not be traced"):
        assert fold_batchnorm(Dynamic().eval()) == []


def test_group_size_that_does_not_divide_is_an_error_naming_the_layer(net):
    with pytest.raises(ValueError, match=r"Layer 'conv1' \(Conv2d\) has 9 inputs .* group size 8.*"
                                         r"group_fallback='channel'.*--group-fallback channel"):  # Python and CLI
        emulate_model(net, "w4a16-g8")


def test_group_fallback_channel_and_skip(net):
    emulated = emulate_model(net, "w4a16-g8", group_fallback="channel", keep_head=False)
    assert emulated.conv1.weight_group_size is None  # 9 % 8 != 0: per output channel
    assert emulated.conv2.weight_group_size == 8  # 72 % 8 == 0
    assert emulated.fc.weight_group_size == 8
    skipped = emulate_model(net, "w4a16-g8", group_fallback="skip")
    assert isinstance(skipped.conv1, nn.Conv2d) and skipped.conv2.weight_group_size == 8
    assert isinstance(skipped.fc, nn.Linear)  # group-wise configs keep the output layer in float
    # a skipped first layer needs no fallback
    assert emulate_model(net, "w4a16-g8", skip=["conv1"]).conv2.weight_group_size == 8


def test_activation_config_needs_calibration_data(net):
    with pytest.raises(ValueError, match="calibration_data"):
        emulate_model(net, "w8a8")


@pytest.mark.parametrize("observer", ["minmax", "percentile", "mse"])
def test_activation_quantization_is_calibrated_and_deterministic(net, images, observer):
    a = emulate_model(net, "w8a8", calibration_data=images, observer=observer)
    b = emulate_model(net, "w8a8", calibration_data=images, observer=observer)
    with torch.no_grad():
        out_a, out_b = a(images), b(images)
    assert torch.equal(out_a, out_b)
    assert a.conv2.act_scale is not None and a.conv2.config.observer == observer
    with torch.no_grad():
        assert (out_a - net(images)).abs().max() < 0.5 * net(images).abs().max()


def test_lower_precision_moves_outputs_more(net, images):
    with torch.no_grad():
        ref = net(images)
        errors = {c: float((emulate_model(net, c, calibration_data=images)(images) - ref).abs().mean())
                  for c in ("w8a8", "w4a8", "w4a4")}
    assert errors["w8a8"] < errors["w4a8"] < errors["w4a4"]


def test_skip_and_overrides_by_layer_name(net, images):
    names = quantizable_layers(net)
    assert names == ["conv1", "conv2", "conv1d", "fc"]
    emulated = emulate_model(net, "w4a4", calibration_data=images, skip=["conv1"], overrides={"fc": "w8a8"})
    assert isinstance(emulated.conv1, nn.Conv2d)
    assert emulated.fc.config.name == "w8a8" and emulated.conv2.config.name == "w4a4"
    with pytest.raises(ValueError, match="'conv9' .* does not exist"):
        emulate_model(net, "w8a8", calibration_data=images, skip=["conv9"])


def test_dataloader_of_tuples_as_calibration_data(net, images):
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, torch.zeros(64)), batch_size=16)
    a = emulate_model(net, "w8a8", calibration_data=loader)
    b = emulate_model(net, "w8a8", calibration_data=images.numpy(), batch_size=16)
    assert torch.equal(a.conv2.act_scale, b.conv2.act_scale)


def test_observers_ranges():
    x = torch.randn(100_000, generator=torch.Generator().manual_seed(0))
    x[0] = 50.0  # one outlier
    fmt = format_info("int4")
    ranges = {}
    for method in ("minmax", "percentile", "mse"):
        obs = RangeObserver(method)
        obs.observe(x[:50_000])
        obs.observe(x[50_000:])
        ranges[method] = obs.range(fmt)
    assert ranges["minmax"][1] == 50.0
    assert ranges["percentile"][1] < 10.0
    assert ranges["mse"][1] < 50.0
    with pytest.raises(ValueError, match="observer"):
        RangeObserver("median")
    with pytest.raises(RuntimeError, match="seen no"):
        RangeObserver().range(fmt)


@pytest.mark.parametrize("config", ["bf16", "w8a16"])
def test_a_model_without_linear_or_conv_layers_is_refused(config):
    """A compiled graph (TorchScript, torch.export) hides its layers: emulating it would be a silent no-op."""
    scripted = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(4, 3)))
    with pytest.raises(ValueError, match="nothing to emulate"):
        emulate_model(torch.nn.ReLU(), config)
    with pytest.raises(ValueError, match="nothing to emulate"):
        emulate_model(scripted, config)
    assert emulate_model(torch.nn.ReLU(), "fp32") is not None  # fp32 needs no layers
