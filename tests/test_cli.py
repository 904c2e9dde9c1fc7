"""The ``precal`` command: in-process with click's CliRunner, and as a real process."""

import json
import re
import shutil
import subprocess
import sys

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from precal._numerics import softmax
from precal.cli import cli, main
from precal.demo import DemoResult, DigitsCNN, run_demo
from precal.report import format_table
from precal.emulate import sweep
from precal.metrics import expected_calibration_error

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")

N, K = 120, 3


def invoke(*args, **kwargs):
    return CliRunner().invoke(cli, [str(a) for a in args], **kwargs)


def assert_one_line_error(result, *fragments):
    """Exit code 2, one line on stderr naming the command, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr, result.exception)
    err = result.stderr.strip()
    assert "\n" not in err, err
    assert "Traceback" not in err and err.startswith("precal") and ": error: " in err, err
    for fragment in fragments:
        assert fragment in err, err
    assert result.exception is None or isinstance(result.exception, SystemExit)


# ------------------------------------------------------------------------- files
@pytest.fixture(scope="module")
def zy():
    rng = np.random.default_rng(0)
    y = rng.integers(0, K, size=N)
    z = (3.0 * (1.2 * np.eye(K)[y] + rng.normal(size=(N, K)))).astype(np.float32)
    return z, y


@pytest.fixture(scope="module")
def files(tmp_path_factory, zy):
    z, y = zy
    d = tmp_path_factory.mktemp("evaluate")
    np.savez(d / "zy.npz", logits=z, labels=y)
    np.savez(d / "named.npz", logits_test=z, labels_test=y)
    np.save(d / "z.npy", z)
    np.save(d / "y.npy", y)
    np.savetxt(d / "y.txt", y, fmt="%d")
    torch.save({"logits": torch.from_numpy(z), "labels": torch.from_numpy(y)}, d / "zy.pt")
    names = ["cat", "dog", "fox"]
    lines = [",".join([*names, "label"])] + [",".join([*(f"{v:.9g}" for v in zi), names[yi]]) for zi, yi in zip(z, y)]
    (d / "zy.csv").write_text("\n".join(lines) + "\n")
    (d / "y.csv").write_text("label\n" + "\n".join(map(str, y)) + "\n")
    # bad inputs
    (d / "text.npy").write_text("not an array\n")
    (d / "truncated.npz").write_bytes((d / "zy.npz").read_bytes()[:200])
    np.save(d / "y_short.npy", y[:-1])
    np.save(d / "y_range.npy", y + K)
    torch.save([torch.zeros(3)], d / "list.pt")
    (d / "z.h5").write_bytes(b"\x89HDF")
    (d / "y.json").write_text("[0, 1]")
    zn = z.copy()
    zn[3, 1] = np.nan
    np.savez(d / "nan.npz", logits=zn, labels=y)
    (d / "nolabel.csv").write_text("a,b,c\n1,2,3\n")
    return d


# ------------------------------------------------------------------------- help and version
@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ([], ["evaluate", "sweep", "demo"]),
        (["evaluate"], [".npz", ".npy", ".csv", "--labels", "--precision", "--report", "--json", "--seed", "--cv"]),
        (["sweep"], ["module:factory", ".pt2", "TorchScript", "--configs", "--calibration-inputs", "--device"]),
        (["demo"], ["--seed", "--epochs", "--json"]),
    ],
)
def test_every_command_has_help(command, expected):
    result = invoke(*command, "--help")
    assert result.exit_code == 0 and result.stdout.startswith(f"Usage: precal {' '.join(command)}".rstrip())
    for text in expected:
        assert text in result.stdout


def test_version():
    from precal import __version__

    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"precal {__version__}"


def test_unknown_command_is_one_line():
    assert_one_line_error(invoke("calibrate"), "No such command 'calibrate'")


# ------------------------------------------------------------------------- evaluate
@pytest.mark.parametrize(
    "args",
    [
        ["zy.npz"],
        ["zy.pt"],
        ["z.npy", "--labels", "y.npy"],
        ["z.npy", "--labels", "y.txt"],
        ["z.npy", "--labels", "y.csv"],
        ["zy.csv"],
        ["named.npz", "--logits-key", "logits_test", "--labels-key", "labels_test"],
    ],
    ids=["npz", "pt", "npy+npy", "npy+txt", "npy+csv", "csv", "npz-keys"],
)
def test_evaluate_reads_every_file_kind(files, zy, args):
    z, y = zy
    args = [files / args[0], *[files / a if a.startswith(("y.", "z.")) else a for a in args[1:]]]
    result = invoke("evaluate", *args, "--cv", 2, "--n-bootstrap", 5, "--calibrators", "ts", "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["inputs"]["n_samples"] == N and out["inputs"]["n_classes"] == K
    assert [r["method"] for r in out["rows"]] == ["uncalibrated", "temperature scaling"]
    ece = out["rows"][0]["metrics"]["ece"]["plugin"]
    assert ece == pytest.approx(expected_calibration_error(y, softmax(z.astype(np.float64))), rel=1e-6)
    for row in out["rows"]:
        for m in row["metrics"].values():
            assert m["low"] <= m["estimate"] <= m["high"]
    assert out["rows"][1]["metrics"]["nll"]["estimate"] < out["rows"][0]["metrics"]["nll"]["estimate"]


def test_evaluate_prints_a_table_with_intervals(files):
    result = invoke("evaluate", files / "zy.npz", "--cv", 2, "--n-bootstrap", 10, "--calibrators", "ts,pacs")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("method"))
    assert lines[header].split()[:3] == ["method", "accuracy", "%"]
    body = lines[header + 2: header + 5]
    assert [line.split()[0] for line in body] == ["uncalibrated", "temperature", "PACS"]
    assert all("[" in line and "]" in line for line in body)
    assert "2-fold stratified cross-validation" in result.stdout


def test_evaluate_precision_rounds_and_diagnoses(files):
    result = invoke("evaluate", files / "zy.npz", "--precision", "BF16", "--cv", 2, "--n-bootstrap", 0,
                    "--calibrators", "ts,pacs", "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["settings"]["precision"] == "bf16" and out["settings"]["pacs_precision"] == "bf16"
    assert [r["logits"] for r in out["rows"]] == ["as given", "bf16", "bf16", "bf16"]
    names = {d["name"] for d in out["diagnostics"]}
    assert {"share swapped", "mean |confidence gap|", "mean true-class shift", "softmax in bf16: share at 1.0"} <= names


def test_evaluate_accepts_the_new_calibrators_and_reports_autos_choice(files):
    result = invoke("evaluate", files / "zy.npz", "--calibrators", "ets,TopLabel,auto", "--cv", 2, "--n-bootstrap",
                    0, "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert [r["method"] for r in out["rows"]] == ["uncalibrated", "ensemble temperature scaling", "top-label", "auto"]
    assert list(out["settings"]["calibrators"]) == ["ets", "toplabel", "auto"]
    assert len(out["fitted"]["auto"]["chosen_per_fold"]) == 2
    assert len(out["fitted"]["ets"]["per_fold"]["weights_[2]"]) == 2
    text = invoke("evaluate", files / "zy.npz", "--calibrators", "auto", "--cv", 2, "--n-bootstrap", 0)
    assert text.exit_code == 0, text.stderr
    picks = json.loads(invoke("evaluate", files / "zy.npz", "--calibrators", "auto", "--cv", 2, "--n-bootstrap", 0,
                              "--json").stdout)["fitted"]["auto"]["chosen_per_fold"]
    line = next(row for row in text.stdout.splitlines() if row.startswith("auto chose "))  # the picks, in the text too
    assert all(pick in line for pick in picks) and "/2 folds" in line


def test_evaluate_runs_structured_matrix_scaling_by_its_short_name(files):
    result = invoke("evaluate", files / "zy.npz", "--calibrators", "sms", "--cv", 2, "--n-bootstrap", 0, "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert [r["method"] for r in out["rows"]] == ["uncalibrated", "structured matrix scaling"]
    fitted = out["fitted"]["sms"]["per_fold"]
    assert len(fitted["temperature_"]) == 2 and len(fitted["smoothing_"]) == 2


def test_evaluate_report_names_autos_choice(files, tmp_path):
    pytest.importorskip("matplotlib")
    result = invoke("evaluate", files / "zy.npz", "--cv", 2, "--n-bootstrap", 0, "--calibrators", "auto",
                    "--report", tmp_path / "rep")
    assert result.exit_code == 0, result.stderr
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "chose " in md and "on all rows:" in md
    saved = json.loads((tmp_path / "rep" / "calibrators.json").read_text())
    assert saved["auto"]["estimator"] == "AutoCalibrator"


def test_evaluate_metrics_are_selectable(files):
    result = invoke("evaluate", files / "zy.npz", "--metrics", "NLL,debiased-ece,smooth_ece,ece,nll", "--cv", 2,
                    "--n-bootstrap", 5, "--calibrators", "ts", "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["settings"]["metrics"] == ["nll", "debiased_ece", "smooth_ece", "ece"]
    for row in out["rows"]:
        assert list(row["metrics"]) == ["nll", "debiased_ece", "smooth_ece", "ece"]
        for m in row["metrics"].values():
            assert m["low"] <= m["estimate"] <= m["high"]
    table = invoke("evaluate", files / "zy.npz", "--metrics", "all", "--cv", 2, "--n-bootstrap", 0,
                   "--calibrators", "none")
    assert table.exit_code == 0, table.stderr
    header = next(line for line in table.stdout.splitlines() if line.startswith("method"))
    assert "debiased ECE %" in header and "smooth ECE %" in header and header.index("NLL") < header.index("debiased")


def test_evaluate_metric_names_are_the_reports():
    import precal.cli as cli_module
    from precal.report import AVAILABLE_METRICS, METRICS

    assert cli_module.METRIC_NAMES == AVAILABLE_METRICS and cli_module.DEFAULT_METRICS == METRICS


def test_evaluate_without_calibrators_scores_the_logits_alone(files):
    result = invoke("evaluate", files / "zy.npz", "--calibrators", "none", "--cv", 2, "--n-bootstrap", 0, "--json")
    assert result.exit_code == 0, result.stderr
    assert [r["method"] for r in json.loads(result.stdout)["rows"]] == ["uncalibrated"]


def test_evaluate_writes_a_report(files, tmp_path):
    pytest.importorskip("matplotlib")
    result = invoke("evaluate", files / "zy.npz", "--precision", "fp8_e4m3", "--cv", 2, "--n-bootstrap", 5,
                    "--calibrators", "ts", "--report", tmp_path / "rep")
    assert result.exit_code == 0, result.stderr
    assert "Report written to" in result.stdout
    written = {p.name for p in (tmp_path / "rep").iterdir()}
    assert {"report.html", "report.md", "results.json", "calibrators.json", "reliability.png"} <= written
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "data:image/png;base64," in page and "Precision diagnostics" in page


def test_report_without_matplotlib_fails_first_with_the_install_hint(files, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = invoke("evaluate", files / "zy.npz", "--cv", 2, "--report", tmp_path / "rep")
    assert_one_line_error(result, "pip install 'precal[plot]'")
    assert not (tmp_path / "rep").exists()


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["missing.npz"], ["'LOGITS'", "does not exist"]),
        (["text.npy", "--labels", "y.npy"], ["not a .npy file"]),
        (["truncated.npz"], ["truncated.npz", "not a .npz file"]),
        (["zy.npz", "--logits-key", "nope"], ["no key 'nope'", "keys: logits, labels"]),
        (["named.npz"], ["no key 'logits'", "--logits-key"]),
        (["z.npy"], ["--labels FILE"]),
        (["z.npy", "--labels", "y_short.npy"], ["119 entries", "120 rows"]),
        (["z.npy", "--labels", "y_range.npy"], ["class indices 0..2"]),
        (["list.pt"], ["not a tensor"]),
        (["z.h5"], ["suffix '.h5'"]),
        (["z.npy", "--labels", "y.json"], ["suffix '.json'"]),
        (["nan.npz"], ["1 NaN or inf"]),
        (["nolabel.csv"], ["no label column 'label'"]),
        (["zy.npz", "--calibrators", "ts,platt"], ["--calibrators", "unknown calibrator(s) 'platt'"]),
        (["zy.npz", "--metrics", "ece,kece"], ["--metrics", "unknown metric(s) 'kece'", "smooth_ece"]),
        (["zy.npz", "--metrics", ""], ["--metrics"]),
        (["zy.npz", "--precision", "bf17"], ["--precision", "unknown format 'bf17'", "bf16"]),
        (["zy.npz", "--cv", "1"], ["--cv"]),
        (["zy.npz", "--n-bootstrap", "-2"], ["--n-bootstrap"]),
        (["zy.npz", "--cv", "60"], ["n_splits=60"]),
        (["zy.npz", "--cv", "200"], ["at least 200 samples"]),
    ],
)
def test_evaluate_bad_input_is_one_line(files, args, fragments):
    extra = [] if "--n-bootstrap" in args else ["--n-bootstrap", "0"]
    args = [files / args[0], *[files / a if a.startswith(("y", "z")) else a for a in args[1:]]]
    assert_one_line_error(invoke("evaluate", *args, *extra), *fragments)


def test_evaluate_refuses_a_zip_bomb_before_inflating_it(files, tmp_path, monkeypatch):
    """Issue 17: a 1.5 MB .npz of zeros made `evaluate` inflate 2.1 GB before failing on a missing key."""
    import zipfile

    from tests.test_io import write_zip_bomb

    bomb = write_zip_bomb(tmp_path / "bomb.npz", 16 * 2**20, keys=("zeros", "more"))

    def forbidden(*args, **kwargs):
        raise AssertionError("a member was opened for reading")

    monkeypatch.setattr(zipfile.ZipExtFile, "__init__", forbidden)
    assert_one_line_error(invoke("evaluate", bomb, "--max-input-size", "8M"),
                          "expands to 32 MiB", "limit of 8 MiB", "--max-input-size")
    assert_one_line_error(invoke("evaluate", bomb), "no key 'logits'")  # within the default limit: no key
    assert_one_line_error(invoke("evaluate", files / "zy.npz", "--labels", bomb, "--max-input-size", "1M"),
                          "bomb.npz", "expands to 32 MiB")


def test_max_input_size_values():
    from precal.cli import DEFAULT_MAX_INPUT_SIZE, ByteSize
    from precal.io import DEFAULT_MAX_INPUT_BYTES

    size = ByteSize()
    assert size.convert(DEFAULT_MAX_INPUT_SIZE, None, None) == DEFAULT_MAX_INPUT_BYTES
    assert [size.convert(v, None, None) for v in ("512", "1K", "1.5MiB", "2gb", "1T")] == [
        512, 1024, 3 * 2**19, 2 * 2**30, 2**40]
    for bad in ("", "0", "-1G", "4X", "G"):
        with pytest.raises(click.BadParameter):
            size.convert(bad, None, None)


def test_evaluate_warns_on_huge_logits_and_on_clamping(files, tmp_path, zy):
    """Issue 17: a 1e30 logit was taken silently, and fp8_e4m3 clamped it to 448 without a word."""
    z, y = zy
    z = z.astype(np.float64)
    z[0, 0] = 1e30
    np.savez(tmp_path / "huge.npz", logits=z, labels=y)
    result = invoke("evaluate", tmp_path / "huge.npz", "--precision", "fp8_e4m3", "--calibrators", "none",
                    "--cv", 2, "--n-bootstrap", 0)
    assert result.exit_code == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert all(line.startswith("precal evaluate: warning: ") for line in lines), lines
    assert any("LOGITS: 1 logit(s) beyond 10000 in magnitude (largest 1e+30)" in line for line in lines), lines
    assert any("1 logit(s) lie beyond fp8_e4m3's largest value 448" in line for line in lines), lines
    result = invoke("evaluate", files / "zy.npz", "--calibrators", "none", "--cv", 2, "--n-bootstrap", 0)
    assert result.exit_code == 0 and result.stderr == ""  # ordinary logits: no warning


def test_report_escapes_the_file_name_in_every_format(zy, tmp_path):
    """Issue 17: report.md embedded the input file name unescaped."""
    pytest.importorskip("matplotlib")
    z, y = zy
    name = "x<img src=1 onerror=alert(1)>[a](javascript:b)|`c`\nd.npz"
    np.savez(tmp_path / name, logits=z, labels=y)
    result = invoke("evaluate", tmp_path / name, "--calibrators", "ts", "--cv", 2, "--n-bootstrap", 0,
                    "--report", tmp_path / "rep")
    assert result.exit_code == 0, result.stderr
    md = (tmp_path / "rep" / "report.md").read_text()
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "<img src=1" not in page and not re.search(r"(?<!\\)(<img|\]\(javascript)", md)
    # the newline is shown as the two characters \\n, its backslash escaped in Markdown
    assert "\\<img src=1 onerror=alert\\(1\\)\\>\\[a\\]\\(javascript:b\\)\\|\\`c\\`\\\\nd.npz" in md
    assert "&lt;img src=1 onerror=alert(1)&gt;[a](javascript:b)|`c`\\nd.npz" in page
    assert json.loads((tmp_path / "rep" / "results.json").read_text())["inputs"]["logits"] == str(tmp_path / name)
    table = result.stdout.splitlines()
    assert not any(line.startswith("d.npz [logits]") for line in table)  # no raw newline in the summary
    assert any("`c`\\nd.npz [logits]: 120 samples" in line for line in table)


def test_report_replaces_a_planted_link_instead_of_following_it(files, tmp_path):
    """Issue 17: `--report DIR` followed a symlink placed at DIR/report.html."""
    pytest.importorskip("matplotlib")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "rep").mkdir()
    (tmp_path / "rep" / "report.html").symlink_to(victim)
    (tmp_path / "rep" / "report.md").symlink_to(tmp_path / "nowhere.md")  # dangling
    result = invoke("evaluate", files / "zy.npz", "--calibrators", "ts", "--cv", 2, "--n-bootstrap", 0,
                    "--report", tmp_path / "rep")
    assert result.exit_code == 0, result.stderr
    assert victim.read_text() == "precious" and not (tmp_path / "nowhere.md").exists()
    for name in ("report.html", "report.md"):
        assert not (tmp_path / "rep" / name).is_symlink() and (tmp_path / "rep" / name).stat().st_size > 100
    assert not [p for p in (tmp_path / "rep").iterdir() if p.name.startswith(".")]  # no temporary files left


def test_report_folder_is_checked_before_the_work(files, tmp_path):
    (tmp_path / "file").write_text("")
    assert_one_line_error(invoke("evaluate", files / "zy.npz", "--report", tmp_path / "file" / "rep"),
                          "--report", "does not exist")


def test_warnings_are_relayed_as_single_lines(files, tmp_path, zy):
    z, y = zy
    y = y.copy()
    y[y == 2] = 1
    y[0] = 2  # one sample of class 2: fewer than the folds
    np.savez(tmp_path / "rare.npz", logits=z, labels=y)
    result = invoke("evaluate", tmp_path / "rare.npz", "--cv", 2, "--n-bootstrap", 0, "--calibrators", "ts")
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line]
    assert warnings and all(line.startswith("precal evaluate: warning: ") for line in warnings)
    assert any("least populated class" in line for line in warnings)


# ------------------------------------------------------------------------- sweep
FACTORY = '''
import torch
from precal.demo import DigitsCNN


def build():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return DigitsCNN().eval()


class Flatten(torch.nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :10]


class NaNHead(torch.nn.Module):
    """A model whose logits are NaN on any input."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x.flatten(1)) * float("nan")


class Huge(torch.nn.Module):
    """Logits near 3e5: beyond fp16's 65504 and fp8_e4m3's 448."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(64, 10)
        with torch.no_grad():
            self.fc.weight.fill_(1e4)
            self.fc.weight[0] *= 1.01
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(x.flatten(1))


class Untraceable(torch.nn.Module):
    """Conv + BatchNorm with a data-dependent branch, which torch.fx cannot trace."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4 * 64, 10)

    def forward(self, x):
        h = self.bn(self.conv(x))
        if h.sum() > 0:
            h = h.relu()
        return self.fc(h.flatten(1))
'''


def _reference_model():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return DigitsCNN().eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A factory module, the same model exported (dynamic batch) and scripted, inputs and labels."""
    d = tmp_path_factory.mktemp("sweep")
    (d / "precal_cli_test_models.py").write_text(FACTORY)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(40, 1, 8, 8, generator=gen)
    calib = torch.rand(32, 1, 8, 8, generator=gen)
    y = torch.randint(0, 10, (40,), generator=gen)
    np.savez(d / "inputs.npz", inputs=x.numpy(), labels=y.numpy())
    np.save(d / "calib.npy", calib.numpy())
    np.save(d / "rgb.npy", torch.rand(4, 3, 8, 8, generator=gen).numpy())
    (d / "text.npy").write_text("not an array\n")
    model = _reference_model()
    batch = torch.export.Dim("batch", min=1)
    torch.export.save(torch.export.export(model, (x[:8],), dynamic_shapes={"x": {0: batch}}), d / "model.pt2")
    torch.jit.script(model).save(str(d / "model.ts"))
    torch.save(model.state_dict(), d / "weights.pt")
    with torch.no_grad():
        expected = model(x).numpy()
    return {"dir": d, "x": x.numpy(), "calib": calib.numpy(), "y": y.numpy(), "fp32": expected}


@pytest.fixture
def in_models_dir(models, monkeypatch):
    monkeypatch.chdir(models["dir"])  # `module:factory` imports from the current directory
    return models["dir"]


def test_sweep_factory_runs_every_config(models, in_models_dir, tmp_path):
    out = tmp_path / "logits.npz"
    result = invoke("sweep", "precal_cli_test_models:build", "inputs.npz", "--configs", "fp32,bf16,w8a8",
                    "--calibration-inputs", "calib.npy", "--out", out, "--batch-size", 16, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.stderr
    with np.load(out) as npz:
        saved = dict(npz)
    assert sorted(saved) == ["bf16", "fp32", "labels", "w8a8"]
    assert all(saved[c].shape == (40, 10) and saved[c].dtype == np.float32 for c in ("fp32", "bf16", "w8a8"))
    np.testing.assert_array_equal(saved["fp32"], models["fp32"])
    np.testing.assert_array_equal(saved["labels"], models["y"])
    expected = sweep(_reference_model(), models["x"], ["bf16", "w8a8"], calibration_data=models["calib"],
                     batch_size=16, progress=False)
    for config in ("bf16", "w8a8"):
        np.testing.assert_array_equal(saved[config], expected[config])
    assert not np.array_equal(saved["bf16"], saved["fp32"])  # the emulation did something
    summary = json.loads(result.stdout)
    assert summary["model"]["kind"] == "factory" and summary["device"] == "cpu"
    rows = {r["config"]: r for r in summary["configs"]}
    assert rows["fp32"]["agreement"] == 1.0 and rows["fp32"]["shape"] == [40, 10]
    p = softmax(models["fp32"].astype(np.float64))
    assert rows["fp32"]["mean_max_prob"] == pytest.approx(p.max(axis=1).mean())
    assert rows["fp32"]["accuracy"] == pytest.approx(np.mean(models["fp32"].argmax(1) == models["y"]))


def test_sweep_untraceable_factory_runs_int_configs_with_a_warning(in_models_dir, tmp_path):
    out = tmp_path / "logits.npz"
    result = invoke("sweep", "precal_cli_test_models:Untraceable", "inputs.npz", "--configs", "fp32,w8a8",
                    "--calibration-inputs", "calib.npy", "--out", out)
    assert result.exit_code == 0, result.stderr
    assert result.stderr.strip().splitlines() == [
        line for line in result.stderr.strip().splitlines() if line.startswith("precal sweep: warning: ")]
    assert "BatchNorm folding skipped" in result.stderr
    with np.load(out) as npz:
        assert npz["w8a8"].shape == (40, 10) and not np.array_equal(npz["w8a8"], npz["fp32"])


@pytest.mark.parametrize("model_file", ["model.pt2", "model.ts"])
def test_sweep_compiled_models_run_fp32(models, in_models_dir, tmp_path, model_file):
    out = tmp_path / "logits.npz"
    result = invoke("sweep", model_file, "inputs.npz", "--trust-model-file", "--configs", "fp32", "--out", out,
                    "--batch-size", 16)
    assert result.exit_code == 0, result.stderr
    with np.load(out) as npz:
        saved = dict(npz)
    assert sorted(saved) == ["fp32", "labels"]
    np.testing.assert_allclose(saved["fp32"], models["fp32"], rtol=1e-6, atol=1e-6)
    assert "argmax agrees with fp32 %" in result.stdout and "fp32" in result.stdout


@pytest.mark.parametrize("model_file", ["model.pt2", "model.ts"])
@pytest.mark.parametrize("config", ["bf16", "w8a8"])
def test_sweep_refuses_to_emulate_compiled_models(models, in_models_dir, tmp_path, model_file, config):
    result = invoke("sweep", model_file, "inputs.npz", "--trust-model-file", "--configs", f"fp32,{config}",
                    "--calibration-inputs", "calib.npy", "--out", tmp_path / "o.npz")
    assert_one_line_error(result, f"config(s) {config} cannot be emulated", "--configs fp32", "module:factory")
    assert not (tmp_path / "o.npz").exists()


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["precal_cli_test_models:build", "inputs.npz", "--configs", "fp32,w9a9"], ["--configs", "w9a9"]),
        (["precal_cli_test_models:build", "inputs.npz", "--configs", "fp32,fp7"], ["Unknown config 'fp7'"]),
        (["precal_cli_test_models:build", "inputs.npz", "--configs", "w8a8"], ["--calibration-inputs FILE"]),
        (["precal_cli_test_models:build", "rgb.npy", "--configs", "fp32"], ["model failed", "1 channels"]),
        (["model.ts", "rgb.npy", "--trust-model-file", "--configs", "fp32"], ["model failed", "1 channels"]),
        (["model.pt2", "rgb.npy", "--trust-model-file", "--configs", "fp32"], ["model failed", "Guard failed"]),
        (["model.pt2", "inputs.npz", "--configs", "fp32"], ["torch.export program", "--trust-model-file"]),
        (["model.ts", "inputs.npz", "--configs", "fp32"], ["TorchScript archive", "--trust-model-file"]),
        (["model.ts", "inputs.npz", "--trust-model-file", "--weights", "weights.pt"], ["--weights goes with"]),
        (["precal_cli_test_models:build", "inputs.npz", "--weights", "model.ts"], ["suffix '.ts'"]),
        (["precal_cli_test_models:Flatten", "inputs.npz", "--configs", "fp32,bf16"], ["no nn.Linear"]),
        (["precal_cli_test_models:nope", "inputs.npz", "--configs", "fp32"], ["has no attribute 'nope'"]),
        (["no_such_pkg_xyz:build", "inputs.npz", "--configs", "fp32"], ["cannot import 'no_such_pkg_xyz'"]),
        (["weights.pt", "inputs.npz", "--configs", "fp32"], ["state_dict", "module:factory", "--weights"]),
        (["missing.pt2", "inputs.npz", "--configs", "fp32"], ["No such file"]),
        (["nothing_here", "inputs.npz", "--configs", "fp32"], ["neither an existing file"]),
        (["model.ts", "text.npy", "--trust-model-file", "--configs", "fp32"], ["not a .npy file"]),
        (["model.ts", "missing.npy"], ["'INPUTS'", "does not exist"]),
        (["model.ts", "inputs.npz", "--trust-model-file", "--configs", "fp32", "--inputs-key", "images"],
         ["no key 'images'"]),
        (["model.ts", "inputs.npz", "--configs", "fp32", "--batch-size", "0"], ["--batch-size"]),
        (["model.ts", "inputs.npz", "--trust-model-file", "--configs", "fp32", "--device", "tpu9"],
         ["--device", "tpu9"]),
    ],
)
def test_sweep_bad_input_is_one_line(in_models_dir, tmp_path, args, fragments):
    assert_one_line_error(invoke("sweep", *args, "--out", tmp_path / "o.npz"), *fragments)


def test_sweep_out_must_be_npz(in_models_dir, tmp_path):
    assert_one_line_error(invoke("sweep", "model.ts", "inputs.npz", "--configs", "fp32", "--out", tmp_path / "o.txt"),
                          "--out", "must end in .npz")


def test_sweep_runs_nothing_from_a_hostile_pt2(models, in_models_dir, tmp_path):
    """Issue 17: `precal sweep MODEL.pt2` ran a shell command stored in the file."""
    from tests.test_io import write_hostile_pt2

    marker = tmp_path / "pwned"
    write_hostile_pt2(tmp_path / "hostile.pt2", marker)
    result = invoke("sweep", tmp_path / "hostile.pt2", "inputs.npz", "--configs", "fp32", "--out", tmp_path / "o.npz")
    assert_one_line_error(result, "weights_only=False", "--trust-model-file")
    assert not marker.exists() and not (tmp_path / "o.npz").exists()


def test_sweep_factory_with_safetensors_weights(models, in_models_dir, tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    safetensors_torch.save_file(_reference_model().state_dict(), tmp_path / "w.safetensors")
    out = tmp_path / "logits.npz"
    # precal.demo:DigitsCNN builds a fresh (differently initialised) network; the weights make it the reference
    result = invoke("sweep", "precal.demo:DigitsCNN", "inputs.npz", "--weights", tmp_path / "w.safetensors",
                    "--configs", "fp32", "--out", out)
    assert result.exit_code == 0, result.stderr
    with np.load(out) as npz:
        np.testing.assert_array_equal(npz["fp32"], models["fp32"])


def test_sweep_of_nan_inputs_is_an_error(in_models_dir, tmp_path):
    """Issue 17: a sweep over all-NaN inputs exited 0 and wrote NaN logits."""
    np.save(tmp_path / "nan.npy", np.full((6, 1, 8, 8), np.nan, dtype=np.float32))
    result = invoke("sweep", "precal_cli_test_models:build", tmp_path / "nan.npy", "--configs", "fp32,bf16",
                    "--out", tmp_path / "o.npz")
    assert_one_line_error(result, "384 NaN or inf")
    assert not (tmp_path / "o.npz").exists()


def test_sweep_nan_logits_are_an_error_naming_the_configs(in_models_dir, tmp_path):
    result = invoke("sweep", "precal_cli_test_models:NaNHead", "inputs.npz", "--configs", "fp32,bf16",
                    "--out", tmp_path / "o.npz")
    assert_one_line_error(result, "NaN or inf under config(s) fp32 (400 of 400 values), bf16 (400 of 400 values)",
                          "Nothing was written")
    assert not (tmp_path / "o.npz").exists()


def test_sweep_overflow_is_an_error_and_saturation_a_warning(in_models_dir, tmp_path):
    result = invoke("sweep", "precal_cli_test_models:Huge", "inputs.npz", "--configs", "fp32,fp16",
                    "--out", tmp_path / "o.npz")
    assert_one_line_error(result, "under config(s) fp16 (", "fp16 overflows beyond ±65504")
    result = invoke("sweep", "precal_cli_test_models:Huge", "inputs.npz", "--configs", "fp32,fp8_e4m3",
                    "--out", tmp_path / "o.npz")
    assert result.exit_code == 0, result.stderr
    warnings = result.stderr.strip().splitlines()
    assert all(line.startswith("precal sweep: warning: ") for line in warnings), warnings
    # the emulator keeps an 8-bit layer's output in bf16, so the logits survive; stored in fp8 they would not
    assert any("config fp8_e4m3: 400 logit(s) at or beyond fp8_e4m3's largest value ±448; stored in fp8_e4m3, "
               "they would be clamped to ±448" in w for w in warnings), warnings
    assert any("config fp32: 400 logit(s) beyond 10000 in magnitude" in w for w in warnings), warnings
    with np.load(tmp_path / "o.npz") as npz:
        assert np.abs(npz["fp8_e4m3"]).min() > 448


def test_sweep_out_is_not_overwritten_without_force(models, in_models_dir, tmp_path):
    """Issue 17: `sweep --out` overwrote an existing file silently."""
    out = tmp_path / "o.npz"
    out.write_bytes(b"keep me")
    args = ["sweep", "precal_cli_test_models:build", "inputs.npz", "--configs", "fp32", "--out", out]
    assert_one_line_error(invoke(*args), "exists; pass --force to overwrite it")
    assert out.read_bytes() == b"keep me"
    assert invoke(*args, "--force").exit_code == 0
    with np.load(out) as npz:
        np.testing.assert_array_equal(npz["fp32"], models["fp32"])
    # a link planted at --out is replaced, never followed
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    link = tmp_path / "link.npz"
    link.symlink_to(victim)
    assert_one_line_error(invoke(*args[:-1], link), "exists")
    assert invoke(*args[:-1], link, "--force").exit_code == 0
    assert victim.read_text() == "precious" and not link.is_symlink()


def test_sweep_checks_every_path_before_loading_the_model(in_models_dir, tmp_path):
    """Issue 16: `sweep --out /nonexistent/o.npz` failed only after the whole sweep."""
    (tmp_path / "marks_import.py").write_text(
        f"open({str(tmp_path / 'imported')!r}, 'w').close()\n"
        "from precal.demo import DigitsCNN as build\n")
    model = "marks_import:build"
    cases = [
        (["--out", tmp_path / "missing" / "o.npz"], ["--out", "does not exist"]),
        (["--out", tmp_path / "o.npy"], ["--out", "must end in .npz"]),
        (["--out", tmp_path / "o.npz", "--weights", tmp_path / "missing.safetensors"], ["--weights"]),
        (["--out", tmp_path / "o.npz", "--calibration-inputs", tmp_path / "none.npy"], ["--calibration-inputs"]),
        (["--out", tmp_path / "o.npz", "--max-input-size", "1K"], ["inputs.npz", "more than the input size limit"]),
        (["--out", tmp_path / "o.npz", "--max-input-size", "lots"], ["--max-input-size", "'lots' is not a size"]),
    ]
    import sys as _sys

    _sys.path.insert(0, str(tmp_path))
    try:
        for extra, fragments in cases:
            assert_one_line_error(invoke("sweep", model, "inputs.npz", "--configs", "fp32", *extra), *fragments)
            assert not (tmp_path / "imported").exists(), extra
        assert invoke("sweep", model, "inputs.npz", "--configs", "fp32", "--out", tmp_path / "o.npz").exit_code == 0
        assert (tmp_path / "imported").exists()  # the marker works
    finally:
        _sys.path.remove(str(tmp_path))
        _sys.modules.pop("marks_import", None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_sweep_cuda_without_cuda_is_one_line(in_models_dir, tmp_path):
    result = invoke("sweep", "model.ts", "inputs.npz", "--trust-model-file", "--configs", "fp32", "--device", "cuda",
                    "--out", tmp_path / "o.npz")
    assert_one_line_error(result, "CUDA is not available")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sweep_runs_on_cuda(models, in_models_dir, tmp_path):
    out = tmp_path / "logits.npz"
    result = invoke("sweep", "precal_cli_test_models:build", "inputs.npz", "--configs", "fp32,bf16,w8a8",
                    "--calibration-inputs", "calib.npy", "--device", "auto", "--out", out, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["device"] == "cuda"
    with np.load(out) as npz:
        np.testing.assert_allclose(npz["fp32"], models["fp32"], rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------- demo
def test_demo_passes_its_options_and_prints_the_summary(monkeypatch):
    import precal.demo

    calls = []
    result_obj = DemoResult(rows=[{"method": "uncalibrated", "precision": "fp32", "ece": 0.1, "ace": float("nan")}],
                            n_train=3,
                            n_calibration=2, n_test=1, fitted={"temperature": {"fp32": 1.5}})

    def fake_run_demo(**kwargs):
        calls.append(kwargs)
        return result_obj

    monkeypatch.setattr(precal.demo, "run_demo", fake_run_demo)
    monkeypatch.setattr(precal.demo, "format_summary", lambda r: f"SUMMARY of {len(r.rows)} row(s)")
    result = invoke("demo", "--seed", 7, "--epochs", 3)
    assert result.exit_code == 0 and result.stdout == "SUMMARY of 1 row(s)\n"
    assert calls[0]["random_state"] == 7 and calls[0]["epochs"] == 3
    result = invoke("demo", "--json")
    out = json.loads(result.stdout)
    assert out["rows"][0].pop("ace") is None  # strict JSON: NaN becomes null
    expected = result_obj.to_dict()
    expected["rows"][0].pop("ace")
    assert out == expected and calls[1]["random_state"] == 0


def test_bad_argument_gives_one_line_error(capsys):
    assert main(["demo", "--epochs", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("precal demo: error:") and "--epochs" in err and "\n" not in err


@pytest.mark.slow
def test_demo_json_has_scores_before_and_after(capsys):
    assert main(["demo", "--epochs", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    by_precision = {}
    for row in out["rows"]:
        assert set(row) >= {"method", "precision", "accuracy", "ece", "ace", "nll", "brier"}
        assert 0.5 < row["accuracy"] <= 1.0
        by_precision.setdefault(row["precision"], {})[row["method"]] = row
    assert {"fp32", "bf16", "w4a4"} <= set(by_precision)
    for rows in by_precision.values():
        before = rows["uncalibrated"]
        # neither temperature scaling nor PACS changes the argmax
        assert before["accuracy"] == rows["temperature scaling"]["accuracy"] == rows["PACS"]["accuracy"]
        assert rows["temperature scaling"]["nll"] <= before["nll"] + 0.05  # fitted on another half
    assert all(t > 0 for t in out["fitted"]["temperature"].values())
    assert out["n_calibration"] + out["n_test"] + out["n_train"] == 1797
    # the AutoCalibrator row is named after its choice, and the choice is recorded per precision
    for config, rows in by_precision.items():
        chosen = out["fitted"]["auto"][config]["chosen"]
        assert f"auto ({chosen})" in rows
        assert chosen in out["fitted"]["auto"][config]["cv_score"]
        assert out["fitted"]["auto"][config]["metric"] == "ece"


@pytest.mark.slow
def test_demo_is_deterministic():
    a = run_demo(random_state=1, epochs=2)
    b = run_demo(random_state=1, epochs=2)
    assert a.rows == b.rows


@pytest.mark.slow
def test_demo_table_output(capsys):
    assert main(["demo", "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "temperature scaling" in out and "ece" in out and "w4a4" in out and "fitted temperatures" in out


def test_demo_summary_shows_autos_choice():
    from precal.demo import format_summary

    rows = [{"method": m, "precision": "fp32", "ece": 0.1} for m in ("uncalibrated", "auto (ets)")]
    result = DemoResult(rows=rows, n_train=1, n_calibration=1, n_test=1, fitted={
        "temperature": {"fp32": 1.5}, "pacs": {"fp32": {"lambda": 0.0}}, "fuzzy_labels": {},
        "auto": {"fp32": {"chosen": "ets", "metric": "ece", "cv_score": {"temperature": 0.03, "ets": 0.02}}}})
    text = format_summary(result)
    assert "AutoCalibrator's choice" in text and "fp32 ets" in text and "auto (ets)" in text


def test_format_table_aligns_columns():
    table = format_table([{"method": "a", "ece": 0.1}, {"method": "longer", "ece": 0.25}]).splitlines()
    assert len({len(line.rstrip()) for line in table}) == 1


def test_demo_leaves_the_callers_torch_rng_alone():
    from precal.demo import digits_logits

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    digits_logits(epochs=1)
    assert torch.equal(torch.rand(3), expected)


# ------------------------------------------------------------------------- real processes
def _run(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "precal", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def test_python_dash_m_precal_help():
    proc = _run("--help")
    assert proc.returncode == 0 and proc.stdout.startswith("Usage: precal ") and "evaluate" in proc.stdout


@pytest.mark.slow
def test_process_evaluate_happy_path_and_bad_file(files, tmp_path):
    proc = _run("evaluate", files / "zy.npz", "--cv", 2, "--n-bootstrap", 5, "--calibrators", "ts", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["inputs"]["n_samples"] == N
    for args, fragment in [([files / "text.npy", "--labels", files / "y.npy"], "not a .npy file"),
                           ([files / "zy.npz", "--calibrators", "platt"], "unknown calibrator"),
                           ([tmp_path / "missing.npz"], "does not exist")]:
        proc = _run("evaluate", *args)
        assert proc.returncode == 2 and proc.stdout == ""
        err = proc.stderr.strip()
        assert "\n" not in err and "Traceback" not in err and fragment in err, err


@pytest.mark.slow
def test_process_sweep_imports_a_factory_from_the_current_directory(models, tmp_path):
    out = tmp_path / "logits.npz"
    proc = _run("sweep", "precal_cli_test_models:build", "inputs.npz", "--configs", "fp32,w4a4",
                "--calibration-inputs", "calib.npy", "--out", out, cwd=models["dir"])
    assert proc.returncode == 0, proc.stderr
    with np.load(out) as npz:
        np.testing.assert_array_equal(npz["fp32"], models["fp32"])
    assert "w4a4" in proc.stdout and "Logits written to" in proc.stdout
    proc = _run("sweep", "model.pt2", "inputs.npz", "--trust-model-file", "--configs", "w4a4", "--out",
                tmp_path / "o2.npz", cwd=models["dir"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_console_script_runs_the_default_demo():
    exe = shutil.which("precal")
    cmd = [exe, "demo"] if exe else [sys.executable, "-m", "precal", "demo"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "uncalibrated" in proc.stdout and "temperature scaling" in proc.stdout
    assert "Traceback" not in proc.stderr
    version = subprocess.run(cmd[:-1] + ["--version"], capture_output=True, text=True, timeout=60)
    assert version.stdout.startswith("precal ")


HEAVY_MODULES = ("torch", "sklearn", "scipy", "matplotlib")

IMPORT_PROBE = """
import json, sys
import precal.cli
codes = []
for argv in ARGVS:
    try:
        codes.append(precal.cli.main(argv))
    except SystemExit as exc:  # --help and --version exit through click
        codes.append(exc.code)
heavy = [m for m in HEAVY if m in sys.modules]
print(json.dumps({"codes": codes, "heavy": heavy}))
"""


def _heavy_modules_after(argvs, cwd=None):
    code = IMPORT_PROBE.replace("ARGVS", repr(argvs)).replace("HEAVY", repr(HEAVY_MODULES))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_help_and_argument_errors_import_no_heavy_library(tmp_path):
    """Issue 16: `precal --help` and every argument error imported torch, scikit-learn and matplotlib first."""
    np.save(tmp_path / "z.npy", np.zeros((4, 3)))
    (tmp_path / "model.pt2").write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip: a .pt2 by its suffix
    argvs = [
        ["--help"], ["--version"], ["evaluate", "--help"], ["sweep", "--help"], ["demo", "--help"],
        ["calibrate"],                                                     # unknown command
        ["evaluate", str(tmp_path / "missing.npz")],                      # missing file
        ["evaluate", str(tmp_path / "z.npy"), "--cv", "1"],               # bad value
        ["evaluate", str(tmp_path / "z.npy"), "--calibrators", "platt"],  # unknown name
        ["evaluate", str(tmp_path / "z.npy"), "--max-input-size", "8"],   # over the size limit
        ["evaluate", str(tmp_path / "z.npy"), "--report", str(tmp_path / "no" / "such" / "dir" / "x")],
        ["sweep", "m:build", str(tmp_path / "z.npy"), "--out", str(tmp_path / "missing" / "o.npz")],
        ["sweep", "m:build", str(tmp_path / "z.npy"), "--out", str(tmp_path / "z.npy")],
        ["sweep", str(tmp_path / "model.pt2"), str(tmp_path / "z.npy"), "--out", str(tmp_path / "o.npz")],
        ["demo", "--epochs", "0"],
    ]
    (tmp_path / "no").mkdir()
    (tmp_path / "no" / "such").write_text("a file, not a folder")
    result = _heavy_modules_after(argvs)
    assert result["heavy"] == [], result
    assert result["codes"] == [0] * 5 + [2] * 10, result
    # the probe is real: a command that does its work imports them
    np.savez(tmp_path / "zy.npz", logits=np.eye(3)[[0, 1, 2, 0]], labels=[0, 1, 2, 0])
    done = _heavy_modules_after([["evaluate", str(tmp_path / "zy.npz"), "--cv", "2", "--n-bootstrap", "0",
                                  "--calibrators", "none"]])
    assert done["codes"] == [0] and {"torch", "sklearn"} <= set(done["heavy"]), done


def test_import_precal_is_lazy_but_complete():
    code = ("import sys, precal; light = [m for m in %r if m in sys.modules]; "
            "from precal import TemperatureScaling, load_calibrator; import precal.metrics; "
            "missing = [n for n in precal.__all__ if not hasattr(precal, n)]; "
            "print(light, missing, set(precal.__all__) <= set(dir(precal)), TemperatureScaling.__module__)"
            % (HEAVY_MODULES,))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["[]", "[]", "True", "precal.calibration.temperature"]


def test_top_level_exports_the_new_calibrators():
    import precal
    import precal.calibration

    new = {"EnsembleTemperatureScaling", "TopLabelCalibrator", "StructuredMatrixScaling", "AutoCalibrator"}
    assert new <= set(precal.__all__) and new <= set(precal.calibration.__all__)
    for name in new:
        assert getattr(precal, name) is getattr(precal.calibration, name)
        assert name in dir(precal)


def test_main_returns_the_exit_code_without_exiting(tmp_path):
    assert main(["--version"]) == 0
    assert main(["evaluate", str(tmp_path / "missing.npz")]) == 2
