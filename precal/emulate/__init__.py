"""Precision emulator: number formats, fake quantization, model-level emulation, sweeps.

Every format is emulated as float32 values restricted to the format's grid, with plain
torch element-wise ops, on the input's device (GPU or CPU).

The package imports lazily: ``import precal.emulate`` loads nothing, and each name below
imports its submodule on first use, so the torch-free parts (:mod:`precal.emulate.formats`,
the format tables the CLI checks its arguments against) do not import torch.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

#: Public name -> the submodule that defines it.
_SOURCES = {
    "activations": ("ACT_SCHEMES", "ActQuantizer", "DynamicTokenActQuantizer", "StaticActQuantizer",
                    "register_act_scheme"),
    "attention": ("EmulatedMultiheadAttention", "attention_core"),
    "batches": ("iter_batches", "logits_of"),
    "formats": ("FORMATS", "FloatFormat", "IntFormat", "facts_table", "format_info", "format_names"),
    "hf": ("multiple_choice_logits",),
    "layers": ("ConvAdapter", "EmulatedLayer", "LayerAdapter", "LinearAdapter", "TransposedLinearAdapter",
               "register_layer", "registered_layers"),
    "logits": ("round_logits", "softmax_in_format"),
    "model": ("GROUP_FALLBACKS", "QuantConfig", "emulate_model", "fold_batchnorm", "output_layer", "parse_config",
              "quantizable_layers"),
    "mx": ("BLOCK_FORMATS", "MX_ELEMENTS", "MX_SCALE_ROUNDINGS", "MXElement", "block_quantize", "mx_decode",
           "mx_encode", "mx_quantize", "nvfp4_decode", "nvfp4_encode", "nvfp4_quantize"),
    "observers": ("OBSERVERS", "RangeObserver"),
    "ptq": ("AWQScheme", "GPTQScheme", "SmoothQuantScheme", "awq_scales", "awq_search", "gptq_quantize",
            "smoothquant_scales"),
    "quantize": ("SCALE_RULES", "fake_quantize_int", "int_qparams", "quantize"),
    "sweep": ("predict_logits", "sweep"),
    "weights": ("WEIGHT_SCHEMES", "WeightResult", "WeightScheme", "register_weight_scheme"),
}
_MODULE_OF = {name: module for module, names in _SOURCES.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE_OF))


class _Package(types.ModuleType):
    """Keeps a public name that is also a submodule's (``sweep``) bound to the name, not the module.

    Importing ``precal.emulate.sweep`` makes the import system set the package attribute
    ``sweep`` to the submodule; with eager imports the ``from .sweep import sweep`` that
    followed rebound it to the function, and this does the same for the lazy package.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _MODULE_OF.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

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
