"""Precision emulator: number formats, fake quantization, model-level emulation, sweeps.

Every format is emulated as float32 values restricted to the format's grid, with plain
torch element-wise ops, on the input's device (GPU or CPU).
"""

from .formats import FORMATS, FloatFormat, IntFormat, facts_table, format_info, format_names
from .logits import round_logits, softmax_in_format
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
from .model import EmulatedLayer, QuantConfig, emulate_model, fold_batchnorm, parse_config, quantizable_layers
from .observers import OBSERVERS, RangeObserver
from .quantize import SCALE_RULES, fake_quantize_int, int_qparams, quantize
from .sweep import predict_logits, sweep

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
    "EmulatedLayer",
    "emulate_model",
    "fold_batchnorm",
    "quantizable_layers",
    "RangeObserver",
    "OBSERVERS",
    "sweep",
    "predict_logits",
]
