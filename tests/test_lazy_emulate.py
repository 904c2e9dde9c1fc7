"""precal.emulate imports lazily, and `precal sweep` refuses impossible config names without torch (issue 16)."""

import json
import subprocess
import sys

import numpy as np
import pytest

PROBE = """
import json, sys
import precal.cli
codes = []
for argv in ARGVS:
    try:
        codes.append(precal.cli.main(argv))
    except SystemExit as exc:
        codes.append(exc.code)
import precal.emulate
from precal.emulate import FORMATS, format_info
print(json.dumps({"codes": codes, "torch": "torch" in sys.modules, "bf16": format_info("bf16").name}))
"""


def _probe(argvs):
    code = PROBE.replace("ARGVS", repr(argvs))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_unknown_configs_and_the_format_tables_do_not_import_torch(tmp_path):
    np.save(tmp_path / "z.npy", np.zeros((4, 3)))
    out = str(tmp_path / "o.npz")
    argvs = [["sweep", "m:build", str(tmp_path / "z.npy"), "--configs", bad, "--out", out]
             for bad in ("nonsense", "fp32,fp7", "w8a8,bf16-attn,int8")]
    result = _probe(argvs)
    assert result == {"codes": [2, 2, 2], "torch": False, "bf16": "bf16"}, result


def test_the_torch_free_check_rejects_only_names_the_emulator_rejects():
    from precal.cli import _config_may_parse
    from precal.emulate import format_names, parse_config
    from precal.emulate.mx import BLOCK_FORMATS

    names = ["fp32", "w8a8", "w4a4", "w4a16-g128", "w8a8-dyn", "w8a8-x86", "w4a16-g128-gptq-actorder", "w8a8-sq",
             "w9a9", "w8a8-bogus", "mxfp4-rceil", "w-mxfp4", "w-nvfp4", "mxbogus", "nvfp", "int8", "fp7", "nonsense",
             "fp16-attn", "FP16", " bf16 ", "uint8-attn", ""]
    names += list(format_names()) + [f"{f}-attn" for f in format_names()] + list(BLOCK_FORMATS)
    rejected_by_check = 0
    for name in names:
        try:
            parse_config(name)
            accepted = True
        except (ValueError, TypeError):
            accepted = False
        if not _config_may_parse(name):
            rejected_by_check += 1
            assert not accepted, name
    assert rejected_by_check >= 5  # int8, fp7, nonsense, uint8-attn, "" and the integer formats


def test_lazy_package_resolves_every_public_name_and_keeps_sweep_a_function():
    code = ("import sys, types, precal.emulate as e; assert 'torch' not in sys.modules; "
            "import precal.emulate.sweep; "
            "missing = [n for n in e.__all__ if not hasattr(e, n)]; "
            "print(missing, isinstance(e.sweep, types.FunctionType), set(e.__all__) <= set(dir(e)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["[]", "True", "True"]
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        import precal.emulate

        precal.emulate.nope  # noqa: B018


@pytest.mark.parametrize("config", ["w4a16-g128-gptq", "w4a16-g128-awq", "w8a8-dyn-sq"])
def test_ptq_configs_parse_in_a_fresh_process(config):
    """The lazy ``precal.emulate`` still registers the PTQ weight schemes before a config names one."""
    code = f"from precal.emulate import parse_config; print(parse_config({config!r}).weight_scheme)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] in {"gptq", "awq", "smoothquant"}
