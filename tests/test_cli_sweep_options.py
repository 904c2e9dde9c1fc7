"""``precal sweep``'s emulation options (--keep-head, --embeddings, --observer, --group-fallback):
each gives the logits of ``precal.emulate.sweep`` with that keyword, and a misuse is one line
before any model is loaded."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from precal.cli import _EMULATION_OPTIONS, cli
from precal.emulate import sweep
from precal.emulate.model import GROUP_FALLBACKS
from precal.emulate.observers import OBSERVERS

MODELS = '''
import torch


class TinyLM(torch.nn.Module):
    """Token embedding (vocabulary 32, width 48), a hidden layer and a 5-way head."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.embed = torch.nn.Embedding(32, 48)
            self.fc = torch.nn.Linear(48, 64)
            self.head = torch.nn.Linear(64, 5)
        self.eval()

    def forward(self, ids):
        return self.head(torch.relu(self.fc(self.embed(ids).mean(1))))


class Boom(torch.nn.Module):
    """A model that must never be built: the option checks come first."""

    def __init__(self):
        raise RuntimeError("the model was loaded")
'''


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep-options")
    (d / "precal_cli_option_models.py").write_text(MODELS)
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 32, (30, 6), generator=gen)
    calib = torch.randint(0, 32, (24, 6), generator=gen)
    np.save(d / "ids.npy", ids.numpy())
    np.save(d / "calib.npy", calib.numpy())
    return {"dir": d, "ids": ids, "calib": calib}


@pytest.fixture
def here(files, monkeypatch):
    monkeypatch.chdir(files["dir"])  # `module:factory` imports from the current directory
    import importlib
    import sys

    sys.path.insert(0, str(files["dir"]))
    try:
        yield importlib.import_module("precal_cli_option_models")
    finally:
        sys.path.remove(str(files["dir"]))


def run_cli(tmp_path, configs, *options, calibration=False):
    out = tmp_path / "z.npz"
    args = ["sweep", "precal_cli_option_models:TinyLM", "ids.npy", "--configs", configs, "--out", out,
            "--device", "cpu", *options]
    if calibration:
        args += ["--calibration-inputs", "calib.npy"]
    result = invoke(*args)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    with np.load(out) as npz:
        return dict(npz)


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    err = result.stderr.strip()
    assert "\n" not in err.replace("\nTry 'precal sweep -h' for help.", ""), err
    assert "Traceback" not in err and "the model was loaded" not in err, err
    for fragment in fragments:
        assert fragment in err, err


def test_choices_are_the_emulators():
    """The CLI writes the choices out (so `precal --help` imports no torch): they must be the API's."""
    choices = {name: values for _, name, values, _ in _EMULATION_OPTIONS}
    assert tuple(choices["observer"]) == tuple(OBSERVERS)
    assert tuple(choices["group_fallback"]) == tuple(GROUP_FALLBACKS)


@pytest.mark.parametrize(
    ("configs", "options", "api", "calibration"),
    [
        ("w4a16-g16", ["--no-keep-head"], {"keep_head": False}, False),  # -g keeps the head by default
        ("w4a16", ["--keep-head"], {"keep_head": True}, False),  # per-channel quantizes it by default
        ("w4a16", ["--embeddings"], {"embeddings": True}, False),
        ("w8a8", ["--observer", "percentile"], {"observer": "percentile"}, True),
        ("w4a16-g32", ["--group-fallback", "channel"], {"group_fallback": "channel"}, False),  # 48 % 32 != 0
        ("w4a16-g32", ["--group-fallback", "skip"], {"group_fallback": "skip"}, False),
    ],
)
def test_option_gives_the_apis_logits(here, files, tmp_path, configs, options, api, calibration):
    saved = run_cli(tmp_path, f"fp32,{configs}", *options, calibration=calibration)
    calib = files["calib"] if calibration else None
    expected = sweep(here.TinyLM(), files["ids"], [configs], calibration_data=calib, progress=False, **api)
    np.testing.assert_array_equal(saved[configs], expected[configs])
    if "group_fallback" in api:
        # without the fallback the group size that does not divide is an error, so the option did something
        with pytest.raises(ValueError, match="group"):
            sweep(here.TinyLM(), files["ids"], [configs], progress=False)
        kept = sweep(here.TinyLM(), files["ids"], ["w4a16-g16"], progress=False)["w4a16-g16"]
        assert not np.array_equal(saved[configs], kept)
    else:
        default = sweep(here.TinyLM(), files["ids"], [configs], calibration_data=calib, progress=False)[configs]
        assert not np.array_equal(saved[configs], default), "the option changed nothing"
    np.testing.assert_array_equal(saved["fp32"], sweep(here.TinyLM(), files["ids"], ["fp32"], progress=False)["fp32"])


def test_skip_fallback_leaves_the_layer_in_float(here, files, tmp_path):
    """w4a16-g32: with ``skip`` the 48-input fc stays float and the head is
    kept (group-wise config), so the logits are fp32's."""
    saved = run_cli(tmp_path, "fp32,w4a16-g32", "--group-fallback", "skip")
    np.testing.assert_array_equal(saved["w4a16-g32"], saved["fp32"])


@pytest.mark.parametrize(
    ("configs", "options", "fragments"),
    [
        ("fp32,bf16", ["--observer", "mse"], ["'--observer'", "no effect", "statically"]),
        ("fp32,w8a8-dyn", ["--observer", "mse"], ["'--observer'", "no effect"]),
        ("fp32,w8a8", ["--group-fallback", "channel"], ["'--group-fallback'", "-g<group>"]),
        ("fp32", ["--embeddings"], ["'--embeddings'", "only fp32"]),
        ("fp32", ["--no-keep-head"], ["'--no-keep-head'", "only fp32"]),
        ("fp32,w8a8", ["--observer", "kl"], ["'--observer'", "kl"]),
        ("fp32,w4a16-g32", ["--group-fallback", "maybe"], ["'--group-fallback'", "maybe"]),
    ],
)
def test_misused_option_is_one_line_before_the_model_loads(here, tmp_path, configs, options, fragments):
    result = invoke("sweep", "precal_cli_option_models:Boom", "ids.npy", "--configs", configs,
                    "--calibration-inputs", "calib.npy", "--out", tmp_path / "z.npz", *options)
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "z.npz").exists()


def test_group_size_that_does_not_divide_is_an_error_without_the_fallback(here, tmp_path):
    result = invoke("sweep", "precal_cli_option_models:TinyLM", "ids.npy", "--configs", "fp32,w4a16-g32",
                    "--out", tmp_path / "z.npz")
    assert_one_line_error(result, "group")
    assert not (tmp_path / "z.npz").exists()
