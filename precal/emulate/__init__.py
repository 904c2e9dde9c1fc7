"""Precision emulator: number formats, fake quantization, model-level emulation, sweeps.

Every format is emulated as float32 values restricted to the format's grid, with plain
torch element-wise ops, on the input's device (GPU or CPU).
"""

from .activations import ACT_SCHEMES, ActQuantizer, DynamicTokenActQuantizer, StaticActQuantizer, register_act_scheme
from .attention import EmulatedMultiheadAttention, attention_core
from .batches import iter_batches, logits_of
from .formats import FORMATS, FloatFormat, IntFormat, facts_table, format_info, format_names
from .hf import multiple_choice_logits
from .layers import (
    ConvAdapter,
    EmulatedLayer,
    LayerAdapter,
    LinearAdapter,
    TransposedLinearAdapter,
    register_layer,
    registered_layers,
)
from .logits import round_logits, softmax_in_format
from .model import (
    GROUP_FALLBACKS,
    QuantConfig,
    emulate_model,
    fold_batchnorm,
    output_layer,
    parse_config,
    quantizable_layers,
)
from .mx import (
    BLOCK_FORMATS,
    MX_ELEMENTS,
    MX_SCALE_ROUNDINGS,
    MXElement,
    block_quantize,
    mx_decode,
    mx_encode,
    mx_quantize,
    nvfp4_decode,
    nvfp4_encode,
    nvfp4_quantize,
)
from .observers import OBSERVERS, RangeObserver
from .ptq import (
    AWQScheme,
    GPTQScheme,
    SmoothQuantScheme,
    awq_scales,
    awq_search,
    gptq_quantize,
    smoothquant_scales,
)
from .quantize import SCALE_RULES, fake_quantize_int, int_qparams, quantize
from .sweep import predict_logits, sweep
from .weights import WEIGHT_SCHEMES, WeightResult, WeightScheme, register_weight_scheme

__all__ = [
    "FORMATS",
    "FloatFormat",
    "IntFormat",
    "format_info",
    "format_names",
    "facts_table",
    "quantize",
    "fake_quantize_int",
    "int_qparams",
    "SCALE_RULES",
    "mx_quantize",
    "mx_encode",
    "mx_decode",
    "nvfp4_quantize",
    "nvfp4_encode",
    "nvfp4_decode",
    "block_quantize",
    "MXElement",
    "MX_ELEMENTS",
    "MX_SCALE_ROUNDINGS",
    "BLOCK_FORMATS",
    "round_logits",
    "softmax_in_format",
    "QuantConfig",
    "parse_config",
    "GROUP_FALLBACKS",
    "EmulatedLayer",
    "EmulatedMultiheadAttention",
    "attention_core",
    "emulate_model",
    "fold_batchnorm",
    "quantizable_layers",
    "output_layer",
    "LayerAdapter",
    "LinearAdapter",
    "ConvAdapter",
    "TransposedLinearAdapter",
    "register_layer",
    "registered_layers",
    "ActQuantizer",
    "StaticActQuantizer",
    "DynamicTokenActQuantizer",
    "ACT_SCHEMES",
    "register_act_scheme",
    "WeightScheme",
    "WeightResult",
    "WEIGHT_SCHEMES",
    "register_weight_scheme",
    "gptq_quantize",
    "awq_search",
    "awq_scales",
    "smoothquant_scales",
    "GPTQScheme",
    "AWQScheme",
    "SmoothQuantScheme",
    "RangeObserver",
    "OBSERVERS",
    "sweep",
    "predict_logits",
    "iter_batches",
    "logits_of",
    "multiple_choice_logits",
]
