"""precal.io: the files the ``precal`` command reads (logits, labels, inputs, models)."""

import importlib.util
import io
import json
import os
import shlex
import struct
import zipfile

import numpy as np
import pytest
import torch
from numpy.testing import assert_array_equal

from precal.demo import DigitsCNN
from precal.io import (
    DEFAULT_MAX_INPUT_BYTES,
    FileFormatError,
    InputTooLargeError,
    UntrustedFileError,
    check_model_spec,
    input_size,
    load_inputs,
    load_logits,
    load_model,
    load_weights,
    model_file_kind,
    read_arrays,
    select_array,
    write_file_atomic,
)

# TorchScript is deprecated in torch >= 2.9 but still what many deployed models are saved as
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")


@pytest.fixture
def zy():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=40)
    z = (3.0 * np.eye(3)[y] + rng.normal(size=(40, 3))).astype(np.float32)
    return z, y


def _write_csv(path, header, rows):
    path.write_text("\n".join([",".join(header), *(",".join(map(str, r)) for r in rows)]) + "\n")
    return path


# ------------------------------------------------------------------ read_arrays / select_array
def test_read_arrays_reads_every_array_kind(tmp_path, zy):
    z, y = zy
    np.save(tmp_path / "z.npy", z)
    np.savez(tmp_path / "zy.npz", logits=z, labels=y)
    torch.save(torch.from_numpy(z), tmp_path / "t.pt")
    torch.save({"logits": torch.from_numpy(z), "labels": torch.from_numpy(y)}, tmp_path / "d.pth")
    assert_array_equal(read_arrays(tmp_path / "z.npy")[""], z)
    npz = read_arrays(tmp_path / "zy.npz")
    assert set(npz) == {"logits", "labels"} and npz["labels"].dtype == y.dtype
    assert_array_equal(read_arrays(tmp_path / "t.pt")[""], z)
    d = read_arrays(tmp_path / "d.pth")
    assert_array_equal(d["logits"], z)
    assert_array_equal(d["labels"], y)


def test_bfloat16_tensors_come_back_as_exact_float32(tmp_path, zy):
    t = torch.from_numpy(zy[0]).bfloat16()
    torch.save({"logits": t}, tmp_path / "b.pt")
    out = read_arrays(tmp_path / "b.pt")["logits"]
    assert out.dtype == np.float32
    assert torch.equal(torch.from_numpy(out).bfloat16().float(), torch.from_numpy(out))  # on the bf16 grid
    assert_array_equal(out, t.float().numpy())


@pytest.mark.parametrize("name", ["text.npy", "text.npz", "text.pt"])
def test_a_text_file_with_an_array_suffix_is_refused(tmp_path, name):
    path = tmp_path / name
    path.write_text("this is not an array\n")
    with pytest.raises(FileFormatError, match=r"text\.(npy|npz|pt)"):
        read_arrays(path)


def test_pickled_object_arrays_are_refused(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(FileFormatError, match="pickled"):
        read_arrays(tmp_path / "obj.npy")


def test_pickled_content_is_refused_in_precals_words_not_the_readers(tmp_path):
    """numpy's refusal names a switch (allow_pickle) and torch's drops its reason; neither is
    an option for a data file here, so the message says what the file holds and what to save."""
    np.savez(tmp_path / "obj.npz", logits=np.array([[1, 2]], dtype=object))
    import argparse

    torch.save({"logits": torch.zeros(2, 2), "extra": argparse.Namespace(a=1)}, tmp_path / "obj.pt")  # not allowlisted
    for path, key in ((tmp_path / "obj.npz", "logits"), (tmp_path / "obj.pt", None)):
        with pytest.raises(FileFormatError, match="pickled Python objects, which precal never loads") as info:
            arrays = read_arrays(path)
            arrays[key]  # a .npz member is read when accessed
        assert "allow_pickle" not in str(info.value) and "Weights only load failed" not in str(info.value)


def test_a_pt_file_must_hold_tensors(tmp_path):
    torch.save([torch.zeros(2), torch.ones(2)], tmp_path / "list.pt")
    with pytest.raises(FileFormatError, match="tensor"):
        read_arrays(tmp_path / "list.pt")
    torch.save({}, tmp_path / "empty.pt")
    with pytest.raises(FileFormatError, match="empty"):
        read_arrays(tmp_path / "empty.pt")


def test_unknown_suffix_and_missing_file(tmp_path):
    (tmp_path / "a.h5").write_bytes(b"x")
    with pytest.raises(FileFormatError, match=r"'\.h5'.*\.npy"):
        read_arrays(tmp_path / "a.h5")
    with pytest.raises(FileNotFoundError):
        read_arrays(tmp_path / "missing.npy")


def test_select_array_prefers_key_then_default_then_single_array():
    a, b = np.zeros(1), np.ones(1)
    assert select_array({"x": a, "logits": b}, "x", "logits", path="f", option="--k") == (a, "x")
    assert select_array({"x": a, "logits": b}, None, "logits", path="f", option="--k") == (b, "logits")
    assert select_array({"only": a}, None, "logits", path="f", option="--k") == (a, "only")
    assert select_array({"": a}, None, "logits", path="f", option="--k") == (a, None)
    with pytest.raises(FileFormatError, match=r"no key 'logits' \(keys: x, y\); choose one with --k"):
        select_array({"x": a, "y": b}, None, "logits", path="f", option="--k")
    with pytest.raises(FileFormatError, match=r"no key 'z' \(keys: x, y\); choose one with --k"):
        select_array({"x": a, "y": b}, "z", "logits", path="f", option="--k")


# ------------------------------------------------------------------ load_logits
def test_load_logits_from_npz_with_default_and_named_keys(tmp_path, zy):
    z, y = zy
    np.savez(tmp_path / "a.npz", logits=z, labels=y)
    np.savez(tmp_path / "b.npz", logits_test=z, labels_test=y, logits_val=z[:5], labels_val=y[:5])
    d = load_logits(tmp_path / "a.npz")
    assert_array_equal(d.logits, z)
    assert_array_equal(d.labels, y)
    assert d.labels.dtype == np.int64 and d.source["logits_key"] == "logits" and d.source["labels_key"] == "labels"
    d = load_logits(tmp_path / "b.npz", logits_key="logits_test", labels_key="labels_test")
    assert_array_equal(d.logits, z)
    assert_array_equal(d.labels, y)
    with pytest.raises(FileFormatError, match="choose one with --logits-key"):
        load_logits(tmp_path / "b.npz")
    with pytest.raises(FileFormatError, match="no labels.*--labels FILE"):
        load_logits(tmp_path / "b.npz", logits_key="logits_test")


@pytest.mark.parametrize("kind", ["npy", "npz", "pt", "txt", "csv"])
def test_load_logits_from_npy_with_a_separate_labels_file(tmp_path, zy, kind):
    z, y = zy
    np.save(tmp_path / "z.npy", z)
    path = tmp_path / f"y.{kind}"
    if kind == "npy":
        np.save(path, y)
    elif kind == "npz":
        np.savez(path, labels=y)
    elif kind == "pt":
        torch.save(torch.from_numpy(y), path)
    elif kind == "txt":
        np.savetxt(path, y, fmt="%d")
    else:
        _write_csv(path, ["label"], [[v] for v in y])
    d = load_logits(tmp_path / "z.npy", path)
    assert_array_equal(d.labels, y)
    assert d.source["labels"] == str(path)


def test_npy_logits_without_labels_say_how_to_give_them(tmp_path, zy):
    np.save(tmp_path / "z.npy", zy[0])
    with pytest.raises(FileFormatError, match="logits only; pass the labels with --labels"):
        load_logits(tmp_path / "z.npy")


def test_separate_labels_take_precedence(tmp_path, zy):
    z, y = zy
    np.savez(tmp_path / "a.npz", logits=z, labels=np.zeros_like(y))
    np.save(tmp_path / "y.npy", y)
    assert_array_equal(load_logits(tmp_path / "a.npz", tmp_path / "y.npy").labels, y)


def test_load_logits_from_csv_with_class_names_or_indices(tmp_path, zy):
    z, y = zy
    names = ["cat", "dog", "fox"]
    rows = [[*(f"{v:.9g}" for v in zi), names[yi]] for zi, yi in zip(z, y)]
    d = load_logits(_write_csv(tmp_path / "a.csv", [*names, "label"], rows))
    np.testing.assert_allclose(d.logits, z, rtol=1e-7)
    assert_array_equal(d.labels, y)
    assert d.class_names == names
    rows = [[yi, *(f"{v:.9g}" for v in zi)] for zi, yi in zip(z, y)]  # label column first, integer labels
    d = load_logits(_write_csv(tmp_path / "b.csv", ["truth", *names], rows), label_column="truth")
    assert_array_equal(d.labels, y)


def test_csv_problems_are_named(tmp_path):
    with pytest.raises(FileFormatError, match="no label column 'label'"):
        load_logits(_write_csv(tmp_path / "a.csv", ["a", "b"], [[1, 2]]))
    with pytest.raises(FileFormatError, match="line 3, column 'b': 'x' is not a number"):
        load_logits(_write_csv(tmp_path / "b.csv", ["a", "b", "label"], [[1, 2, 0], [1, "x", 1]]))
    with pytest.raises(FileFormatError, match="line 2 has 2 field"):
        load_logits(_write_csv(tmp_path / "c.csv", ["a", "b", "label"], [[1, 2]]))
    with pytest.raises(FileFormatError, match="'wolf'.*column names"):
        load_logits(_write_csv(tmp_path / "d.csv", ["a", "b", "label"], [[1, 2, "wolf"]]))
    with pytest.raises(FileFormatError, match="no rows"):
        load_logits(_write_csv(tmp_path / "e.csv", ["a", "b", "label"], []))
    (tmp_path / "f.csv").write_text("")
    with pytest.raises(FileFormatError, match="empty"):
        load_logits(tmp_path / "f.csv")


def test_labels_must_match_the_logits(tmp_path, zy):
    z, y = zy
    np.save(tmp_path / "z.npy", z)
    cases = {
        "short.npy": (y[:-3], "have 37 entries but the logits have 40 rows"),
        "range.npy": (y + 3, r"class indices 0\.\.2.*found \[3, 4, 5\]"),
        "neg.npy": (y - 1, r"found \[-1\]"),
        "frac.npy": (y + 0.5, "integer class indices"),
        "two_d.npy": (np.stack([y, y], axis=1), "1-D"),
    }
    for name, (labels, message) in cases.items():
        np.save(tmp_path / name, labels)
        with pytest.raises(FileFormatError, match=message):
            load_logits(tmp_path / "z.npy", tmp_path / name)
    np.save(tmp_path / "float.npy", y.astype(np.float64))  # integral floats are fine
    assert_array_equal(load_logits(tmp_path / "z.npy", tmp_path / "float.npy").labels, y)
    (tmp_path / "words.txt").write_text("\n".join(["0", "1", "foo"] + ["0"] * 37) + "\n")
    with pytest.raises(FileFormatError, match=r"label 'foo' \(sample 2\)") as info:  # the text, not numpy's repr
        load_logits(tmp_path / "z.npy", tmp_path / "words.txt")
    assert "np.str_" not in str(info.value)


@pytest.mark.parametrize(
    ("logits", "message"),
    [
        (np.zeros(5), "2-D.*two columns"),
        (np.zeros((5, 1)), "at least 1 row and 2 columns"),
        (np.zeros((0, 3)), "at least 1 row"),
        (np.array([[0.0, np.nan], [np.inf, 1.0]]), "2 NaN or inf"),
        (np.array([["a", "b"]]), "must be numbers"),
    ],
)
def test_bad_logits_are_refused(tmp_path, logits, message):
    np.savez(tmp_path / "z.npz", logits=logits, labels=np.zeros(len(logits), dtype=np.int64))
    with pytest.raises(FileFormatError, match=message):
        load_logits(tmp_path / "z.npz")


def test_integer_logits_become_float(tmp_path):
    np.savez(tmp_path / "z.npz", logits=np.array([[3, -1], [0, 2]], dtype=np.int8), labels=[0, 1])
    d = load_logits(tmp_path / "z.npz")
    assert d.logits.dtype == np.float64 and d.logits.tolist() == [[3, -1], [0, 2]]


# ------------------------------------------------------------------ load_inputs
def test_load_inputs_keys_labels_and_dtype(tmp_path):
    x = np.random.default_rng(0).random((6, 1, 8, 8))
    y = np.arange(6)
    np.savez(tmp_path / "a.npz", inputs=x, labels=y)
    np.savez(tmp_path / "b.npz", images=x.astype(np.float32), labels=y)
    np.savez(tmp_path / "c.npz", images=x, other=x)
    np.save(tmp_path / "d.npy", x)
    inputs, labels, key = load_inputs(tmp_path / "a.npz")
    assert inputs.dtype == np.float32 and key == "inputs"
    assert_array_equal(labels, y)
    np.testing.assert_array_equal(inputs, x.astype(np.float32))
    inputs, labels, key = load_inputs(tmp_path / "b.npz")  # the one array that is not labels
    assert key == "images" and labels is not None
    with pytest.raises(FileFormatError, match="choose one with --inputs-key"):
        load_inputs(tmp_path / "c.npz")
    assert load_inputs(tmp_path / "c.npz", "other")[2] == "other"
    inputs, labels, key = load_inputs(tmp_path / "d.npy")
    assert labels is None and key is None and inputs.shape == x.shape
    np.savez(tmp_path / "e.npz", inputs=x, labels=y[:3])  # not these inputs' labels: ignored
    assert load_inputs(tmp_path / "e.npz")[1] is None
    np.save(tmp_path / "f.npy", np.float32(1.0))
    with pytest.raises(FileFormatError, match="batch dimension"):
        load_inputs(tmp_path / "f.npy")


# ------------------------------------------------------------------ load_model
@pytest.fixture(scope="module")
def digits_model():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return DigitsCNN().eval()


class _ShellPayload:
    """Unpickling this runs ``touch MARKER`` in a shell: what a hostile model file would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


def write_hostile_pt2(path, marker):
    """A real torch.export archive whose first weight is a pickle that runs a shell command.

    torch.export.load (torch 2.13) reads weights flagged ``use_pickle`` with
    ``torch.load(weights_only=False)``, so loading this file runs ``touch MARKER``."""
    program = torch.export.export(torch.nn.Linear(3, 2), (torch.rand(2, 3),))
    buf = io.BytesIO()
    torch.export.save(program, buf)
    source = zipfile.ZipFile(buf)
    with zipfile.ZipFile(path, "w") as out:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename.endswith("data/weights/model_weights_config.json"):
                config = json.loads(data)
                config["config"]["weight"]["use_pickle"] = True
                data = json.dumps(config).encode()
            elif info.filename.endswith("data/weights/weight_0"):
                payload = io.BytesIO()
                torch.save(_ShellPayload(marker), payload)
                data = payload.getvalue()
            out.writestr(info, data)
    return path


HOSTILE_TORCHSCRIPT = """
import torch


class Hostile(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.zeros(1)

    def forward(self, x):
        return x

    @torch.jit.export
    def __getstate__(self):
        return (self.w, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]):
        self.w = state[0]
        self.training = state[1]
        # runs inside torch.jit.load: maps MARKER read-write (creating it) and writes into it
        f = torch.from_file(MARKER, shared=True, size=8, dtype=torch.uint8)
        f.fill_(65)
        self.w = self.w + f.sum().float() * 0
"""


def write_hostile_torchscript(path, marker):
    """A TorchScript archive whose ``__setstate__``, run by torch.jit.load, writes the file MARKER."""
    # torch.jit.script needs the source of the class: write it to a module and import that
    module_path = path.parent / "hostile_ts_source.py"
    module_path.write_text(HOSTILE_TORCHSCRIPT.replace("MARKER", repr(str(marker))))
    spec = importlib.util.spec_from_file_location("hostile_ts_source", module_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.jit.script(module.Hostile()).save(str(path))
    return path


def test_hostile_pt2_runs_nothing_without_trust(tmp_path):
    """Issue 17: `precal.io.load_model` ran a shell command from a crafted .pt2 file."""
    marker = tmp_path / "pwned"
    path = write_hostile_pt2(tmp_path / "hostile.pt2", marker)
    with pytest.raises(UntrustedFileError, match=r"weights_only=False.*--trust-model-file.*trust=True"):
        load_model(str(path))
    assert not marker.exists()
    # the payload is real: the loader runs it once trusted (then fails on the non-tensor weight)
    with pytest.raises(FileFormatError):
        load_model(str(path), trust=True)
    assert marker.exists()


def test_hostile_torchscript_runs_nothing_without_trust(tmp_path):
    """torch.jit.load runs a module's __setstate__, which can write any file: TorchScript needs trust too."""
    marker = tmp_path / "written"
    path = write_hostile_torchscript(tmp_path / "hostile.ts", marker)
    assert not marker.exists()
    with pytest.raises(UntrustedFileError, match=r"TorchScript.*__setstate__.*--trust-model-file"):
        load_model(str(path))
    assert not marker.exists()
    load_model(str(path), trust=True)  # the payload is real: trusted, loading writes the file
    assert marker.read_bytes() == b"A" * 8


def test_untrusted_model_files_are_refused_before_torch_reads_them(tmp_path, digits_model, monkeypatch):
    torch.export.save(torch.export.export(digits_model, (torch.rand(2, 1, 8, 8),)), tmp_path / "m.pt2")
    torch.jit.script(digits_model).save(str(tmp_path / "m.ts"))

    def forbidden(*args, **kwargs):
        raise AssertionError("a loader that can run code was called")

    monkeypatch.setattr(torch.export, "load", forbidden)
    monkeypatch.setattr(torch.jit, "load", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    for name, kind in (("m.pt2", "export"), ("m.ts", "torchscript")):
        assert model_file_kind(tmp_path / name) == kind
        with pytest.raises(UntrustedFileError, match="--trust-model-file"):
            load_model(str(tmp_path / name))
        with pytest.raises(UntrustedFileError):
            check_model_spec(str(tmp_path / name))
        assert check_model_spec(str(tmp_path / name), trust=True) == kind


def test_load_model_reads_export_and_torchscript_when_trusted(tmp_path, digits_model):
    x = torch.rand(4, 1, 8, 8)
    torch.export.save(torch.export.export(digits_model, (x,)), tmp_path / "m.pt2")
    torch.jit.script(digits_model).save(tmp_path / "m.ts")
    exported = load_model(str(tmp_path / "m.pt2"), trust=True)
    scripted = load_model(str(tmp_path / "m.ts"), trust=True)
    assert exported.kind == "export" and scripted.kind == "torchscript"
    with torch.no_grad():
        expected = digits_model(x)
        assert torch.allclose(exported.module(x), expected, atol=1e-6)
        assert torch.allclose(scripted.module(x), expected, atol=1e-6)


def test_load_model_imports_factories(tmp_path, monkeypatch):
    (tmp_path / "io_test_factories.py").write_text(
        "import torch\n"
        "from precal.demo import DigitsCNN\n"
        "def build():\n    return DigitsCNN()\n"
        "class Holder:\n    model = torch.nn.Linear(3, 2)\n"
        "def not_a_model():\n    return 42\n"
        "def broken():\n    raise RuntimeError('no weights here')\n"
        "VALUE = 3\n"
    )
    monkeypatch.chdir(tmp_path)  # the current directory is importable, as with `python -m`
    assert load_model("io_test_factories:build").kind == "factory"
    assert isinstance(load_model("io_test_factories:Holder.model").module, torch.nn.Linear)
    assert isinstance(load_model("precal.demo:DigitsCNN").module, DigitsCNN)
    assert str(tmp_path) not in __import__("sys").path  # put back afterwards
    with pytest.raises(ValueError, match="returned a int, not a torch.nn.Module"):
        load_model("io_test_factories:not_a_model")
    with pytest.raises(ValueError, match="calling it failed: RuntimeError: no weights here"):
        load_model("io_test_factories:broken")
    with pytest.raises(ValueError, match="neither an nn.Module nor a callable"):
        load_model("io_test_factories:VALUE")
    with pytest.raises(ValueError, match="has no attribute 'missing'"):
        load_model("io_test_factories:missing")
    with pytest.raises(ValueError, match="cannot import 'no_such_module_xyz'"):
        load_model("no_such_module_xyz:build")
    with pytest.raises(ValueError, match="must look like 'package.module:factory'"):
        load_model(":build")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_factory_with_weights_as_data(tmp_path, digits_model, suffix):
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        safetensors_torch = pytest.importorskip("safetensors.torch")
        safetensors_torch.save_file(digits_model.state_dict(), path)
    else:
        torch.save(digits_model.state_dict(), path)
    loaded = load_model("precal.demo:DigitsCNN", weights=path)  # a fresh, differently initialised CNN
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded.module(x), digits_model(x))
    assert loaded.kind == "factory" and str(path) in loaded.description


def test_weights_that_do_not_fit_or_are_not_weights(tmp_path, digits_model):
    torch.save(torch.nn.Linear(3, 2).state_dict(), tmp_path / "linear.pt")
    with pytest.raises(ValueError, match="do not fit MODEL 'precal.demo:DigitsCNN'.*Missing key"):
        load_model("precal.demo:DigitsCNN", weights=tmp_path / "linear.pt")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(FileFormatError, match="holds list, not a state_dict"):
        load_weights(tmp_path / "list.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00junk!")
    pytest.importorskip("safetensors")
    with pytest.raises(FileFormatError, match="cannot read .* as a safetensors file"):
        load_weights(tmp_path / "junk.safetensors")
    with pytest.raises(FileFormatError, match=r"suffix '\.bin'"):
        load_weights(tmp_path / "w.bin")
    torch.jit.script(digits_model).save(str(tmp_path / "m.ts"))
    with pytest.raises(ValueError, match="--weights goes with a 'module:factory'"):
        load_model(str(tmp_path / "m.ts"), weights=tmp_path / "linear.pt", trust=True)


def test_load_model_names_what_is_wrong_with_a_file(tmp_path, digits_model):
    torch.save(digits_model.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(FileFormatError, match="holds weights.*module:factory.*--weights"):
        load_model(str(tmp_path / "weights.pt"))
    (tmp_path / "junk.pt").write_text("junk")
    with pytest.raises(FileFormatError, match="neither a torch.export program.*nor a TorchScript archive"):
        load_model(str(tmp_path / "junk.pt"))
    with pytest.raises(FileFormatError, match="cannot load .* as TorchScript"):
        load_model(str(tmp_path / "junk.pt"), trust=True)
    (tmp_path / "junk.pt2").write_text("junk")
    with pytest.raises(UntrustedFileError):
        load_model(str(tmp_path / "junk.pt2"))
    with pytest.raises(FileFormatError, match="not a torch.export archive"):
        load_model(str(tmp_path / "junk.pt2"), trust=True)
    with pytest.raises(FileNotFoundError, match="neither an existing file"):
        load_model(str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="No such weights file"):
        load_model("precal.demo:DigitsCNN", weights=tmp_path / "nothing.safetensors")
    with pytest.raises(FileFormatError, match="directory"):
        load_model(str(tmp_path))


# ------------------------------------------------------------------ size limit (zip bombs)
def write_zip_bomb(path, n_bytes, *, keys=("logits",)):
    """A .npz whose members are each ``n_bytes`` of zeros, deflated (about 1000:1)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (n_bytes // 8,)})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for key in keys:
            with zf.open(f"{key}.npy", "w", force_zip64=True) as fh:
                fh.write(header.getvalue())
                chunk = bytes(2**20)
                for _ in range(n_bytes // len(chunk)):
                    fh.write(chunk)
    return path


@pytest.fixture
def no_decompression(monkeypatch):
    """Fail the test if anything opens a member of a zip archive for reading (where inflating starts)."""
    opened = []

    def forbidden(self, fileobj, mode, zipinfo, *args, **kwargs):
        opened.append(zipinfo.filename)
        raise AssertionError(f"{zipinfo.filename} was opened for reading")

    monkeypatch.setattr(zipfile.ZipExtFile, "__init__", forbidden)
    return opened


def test_a_zip_bomb_fails_from_its_headers_before_decompressing(tmp_path, no_decompression):
    """Issue 17: a 1.5 MB .npz of zeros made `precal evaluate` inflate 2.1 GB."""
    bomb = write_zip_bomb(tmp_path / "bomb.npz", 32 * 2**20)
    assert bomb.stat().st_size < 2**20 // 8  # tiny on disk
    assert input_size(bomb) > 32 * 2**20
    for read in (lambda: read_arrays(bomb, max_bytes=2**20), lambda: load_logits(bomb, max_bytes=2**20),
                 lambda: load_inputs(bomb, max_bytes=2**20)):
        with pytest.raises(InputTooLargeError, match=r"expands to 32 MiB.*limit of 1 MiB.*--max-input-size"):
            read()
    assert no_decompression == []


def test_the_default_limit_is_4_gib_and_none_lifts_it(tmp_path):
    assert DEFAULT_MAX_INPUT_BYTES == 4 * 2**30
    z = np.zeros((8, 3))
    np.savez(tmp_path / "z.npz", logits=z, labels=np.zeros(8, dtype=int))
    size = input_size(tmp_path / "z.npz")
    assert size > z.nbytes
    with pytest.raises(InputTooLargeError):
        read_arrays(tmp_path / "z.npz", max_bytes=size - 1)
    assert set(read_arrays(tmp_path / "z.npz", max_bytes=size)) == {"logits", "labels"}
    assert set(read_arrays(tmp_path / "z.npz", max_bytes=None)) == {"logits", "labels"}
    np.save(tmp_path / "z.npy", z)  # a .npy file: its size on disk
    assert input_size(tmp_path / "z.npy") == (tmp_path / "z.npy").stat().st_size
    with pytest.raises(InputTooLargeError):
        load_logits(tmp_path / "z.npy", tmp_path / "z.npz", max_bytes=z.nbytes)


def test_a_torch_file_bomb_is_refused_too(tmp_path):
    """torch.load inflates deflated members of a .pt archive, so .pt files are checked the same way."""
    torch.save({"logits": torch.zeros(2**18, 4)}, tmp_path / "plain.pt")
    source = zipfile.ZipFile(tmp_path / "plain.pt")
    with zipfile.ZipFile(tmp_path / "bomb.pt", "w", zipfile.ZIP_DEFLATED) as out:
        for info in source.infolist():
            out.writestr(info.filename, source.read(info.filename))
    assert (tmp_path / "bomb.pt").stat().st_size < 2**17
    with pytest.raises(InputTooLargeError, match="4 MiB"):
        read_arrays(tmp_path / "bomb.pt", max_bytes=2**20)
    assert read_arrays(tmp_path / "bomb.pt")["logits"].shape == (2**18, 4)


def test_a_missing_key_fails_before_any_array_is_inflated(tmp_path, no_decompression):
    bomb = write_zip_bomb(tmp_path / "bomb.npz", 4 * 2**20, keys=("scores", "targets"))
    with pytest.raises(FileFormatError, match="no key 'logits' .*keys: scores, targets"):
        load_logits(bomb)
    with pytest.raises(FileFormatError, match="no key 'images'"):
        load_inputs(bomb, "images")
    assert no_decompression == []


def test_a_member_that_understates_its_size_is_not_inflated_past_it(tmp_path):
    """The headers bound what reading produces: zipfile stops at the declared size (then the CRC fails)."""
    np.savez_compressed(tmp_path / "zeros.npz", logits=np.zeros(2**17))  # 1 MiB of zeros
    data = bytearray((tmp_path / "zeros.npz").read_bytes())
    struct.pack_into("<I", data, 22, 4096)  # local header: uncompressed size
    struct.pack_into("<I", data, data.rfind(b"PK\x01\x02") + 24, 4096)  # central directory: the same
    forged = tmp_path / "forged.npz"
    forged.write_bytes(bytes(data))
    assert input_size(forged) == 4096
    with pytest.raises(FileFormatError, match="forged.npz"):
        read_arrays(forged)


# ------------------------------------------------------------------ atomic writes
def test_write_file_atomic_replaces_a_planted_link_instead_of_following_it(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "out").mkdir()
    link = tmp_path / "out" / "report.html"
    link.symlink_to(victim)
    write_file_atomic(link, b"<html></html>")
    assert victim.read_text() == "precious"
    assert not link.is_symlink() and link.read_bytes() == b"<html></html>"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.html"]  # no temporary file left


def test_write_file_atomic_without_overwrite_keeps_what_is_there(tmp_path):
    target = tmp_path / "o.npz"
    write_file_atomic(target, lambda fh: np.savez(fh, a=np.arange(3)), overwrite=False)
    assert np.load(target)["a"].tolist() == [0, 1, 2]
    with pytest.raises(FileExistsError, match="exists"):
        write_file_atomic(target, b"new", overwrite=False)
    dangling = tmp_path / "dangling.npz"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError):
        write_file_atomic(dangling, b"new", overwrite=False)
    assert not (tmp_path / "nowhere").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling.npz", "o.npz"]


def test_write_file_atomic_leaves_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "r.json"
    target.write_text("old")

    def broken(fh):
        fh.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_file_atomic(target, broken)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["r.json"]
    mode = os.stat(write_file_atomic(tmp_path / "new.txt", b"x")).st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # the usual permissions, not mkstemp's 0600


def test_float_inputs_must_be_finite(tmp_path):
    x = np.random.default_rng(0).random((4, 3)).astype(np.float32)
    x[1, 2] = np.nan
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(FileFormatError, match="1 NaN or inf"):
        load_inputs(tmp_path / "nan.npy")
    np.save(tmp_path / "big.npy", np.full((2, 2), 1e300))
    with pytest.raises(FileFormatError, match="exceed the float32 range"):
        load_inputs(tmp_path / "big.npy")
