"""Backend-faithful static int8 (``w8a8-x86``) against torch.ao's own x86 int8 model."""

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from precal.emulate import RangeObserver, emulate_model, format_info, parse_config
from precal.emulate.activations import StaticActQuantizer
from precal.emulate.backend import SameGridRounding

from .zoo import vision_model

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "models"


def torch_ao_x86(model, calibration, example):
    """torch.ao's FX post-training int8 model with the x86 qconfig, or skip."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.ao.quantization import get_default_qconfig_mapping
            from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

            torch.backends.quantized.engine = "x86"
            prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"),
                                  example_inputs=(example,))
            with torch.no_grad():
                for batch in calibration:
                    prepared(batch)
            return convert_fx(prepared)
    except Exception as exc:  # noqa: BLE001 - torch.ao or its x86 engine unavailable
        pytest.skip(f"torch.ao x86 int8 unavailable: {exc}")


def agreement(a, b):
    return float((a.argmax(1) == b.argmax(1)).mean()), float(np.abs(a - b).mean())


def test_x86_config_fields():
    cfg = parse_config("w8a8-x86")
    assert (cfg.weight_format, cfg.act_format, cfg.act_reduce_range, cfg.observer, cfg.quantize_outputs) == \
        ("int8", "uint8", True, "histogram", True)
    with pytest.raises(ValueError, match="w8a8-x86"):
        parse_config("w4a8-x86")


def test_histogram_observer_is_torch_ao_s():
    from torch.ao.quantization.observer import HistogramObserver

    x = torch.randn(4, 1000, generator=torch.Generator().manual_seed(0)).relu() * 3
    ours = RangeObserver("histogram", fmt=format_info("uint7"))
    ref = HistogramObserver(reduce_range=True)
    for row in x:
        ours.observe(row)
        ref(row)
    scale, zero = ours.qparams(format_info("uint7"))
    ref_scale, ref_zero = ref.calculate_qparams()
    assert float(scale) == float(ref_scale) and int(zero) == int(ref_zero)
    with pytest.raises(ValueError, match="at most 8 bits"):
        RangeObserver("histogram")


def test_reduce_range_scales_for_seven_bits_and_clamps_at_eight():
    q = StaticActQuantizer(format_info("uint8"), parse_config("w8a8-x86"), 1)
    q.calibrate_begin()
    q(torch.linspace(0, 127, 1000))
    q.calibrate_end()
    assert float(q.scale) == pytest.approx(1.0, rel=0.02) and int(q.zero_point) == 0
    assert float(q(torch.tensor([200.0, 400.0]))[1]) == pytest.approx(255 * float(q.scale))


def test_quantization_points_of_a_residual_network():
    model = vision_model("resnet")
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    emulated = emulate_model(model, "w8a8-x86", calibration_data=x)
    code = emulated.code
    # the input, 6 conv outputs (stem, 2 per block, the downsampling 1x1), 2 adds, the linear output
    n_quantizers = sum(isinstance(m, StaticActQuantizer) for m in emulated.modules())
    assert n_quantizers == 1 + 6 + 2 + 1
    assert "relu" in code and sum(isinstance(m, SameGridRounding) for m in emulated.modules()) == 1  # the mean
    assert all(m.act is None for m in emulated.modules() if hasattr(m, "weight_q"))  # no per-layer inputs
    with torch.no_grad():
        out, ref = emulated(x), model(x)
    assert out.shape == ref.shape and not torch.equal(out, ref)
    # the caller's model and a plain w8a8 copy are unaffected
    assert isinstance(model.fc, nn.Linear)


def test_untraceable_model_is_refused():
    class Dynamic(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else -self.fc(x)

    with pytest.raises(ValueError, match="torch.fx can trace"):
        emulate_model(Dynamic(), "w8a8-x86", calibration_data=torch.randn(4, 4))


@pytest.mark.parametrize("name", ["resnet", "mobilenet_v2"])
def test_x86_mode_agrees_with_torch_ao_better_than_with_fp32(name):
    model = vision_model(name)
    gen = torch.Generator().manual_seed(1)
    cal = [torch.randn(16, 3, 16, 16, generator=gen) for _ in range(4)]
    x = torch.randn(64, 3, 16, 16, generator=gen)
    ao = torch_ao_x86(model, cal, cal[0][:1])
    emulated = emulate_model(model, "w8a8-x86", calibration_data=cal)
    with torch.no_grad():
        z32, zao, zx86, zw8a8 = (m(x).numpy() for m in (model, ao, emulated,
                                                        emulate_model(model, "w8a8", calibration_data=cal)))
    dist_ao, dist_fp32 = np.abs(zx86 - zao).mean(), np.abs(zx86 - z32).mean()
    assert dist_ao < 0.5 * dist_fp32
    assert dist_ao < 0.5 * np.abs(zw8a8 - zao).mean()  # closer to torch.ao than per-layer-input w8a8


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "cifar10_resnet20.pt").is_file(), reason="needs ../shared/data/models")
def test_x86_mode_on_the_shared_resnet20():
    from benchmarks.seeds.models import cifar_resnet

    model = cifar_resnet(20)
    model.load_state_dict(torch.load(SHARED / "cifar10_resnet20.pt", weights_only=True))
    model.eval()
    with np.load(SHARED / "cifar10_test_lossless_first1017.npz", allow_pickle=False) as d:
        images = torch.from_numpy(d["images"][:512]).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    x = (images - mean) / std
    cal, test = list(x[:256].split(64)), x[256:]
    ao = torch_ao_x86(model, cal, cal[0][:1])
    emulated = emulate_model(model, "w8a8-x86", calibration_data=cal)
    with torch.no_grad():
        z32, zao, zx86 = model(test).numpy(), ao(test).numpy(), emulated(test).numpy()
    agree_ao, dist_ao = agreement(zx86, zao)
    agree_fp32, dist_fp32 = agreement(zx86, z32)
    assert agree_ao >= agree_fp32 and dist_ao < 0.25 * dist_fp32
