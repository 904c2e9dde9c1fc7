"""Distributed sweeps: ``torchrun --nproc_per_node 2`` (gloo, CPU) equals the single-process sweep.

The end-to-end tests launch this file as a torchrun script (``__main__`` below): each rank
sweeps a small CNN and a small transformer over 37 inputs in batches of 8 (5 batches:
rank 0 gets 3, rank 1 gets 2, so the shards differ in size), at fp32, w8a8 (static
activation observers calibrated on calibration data), w4a16 (int4 weights) and fp8_e4m3
(whose per-batch "current scaling" makes a row's logits depend on its batch: shards that
did not start on a batch boundary would differ), writes what it got, then runs the
bad-input scenarios and writes each rank's error.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from precal.emulate import sweep
from precal.emulate import distributed as dist_

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ["fp32", "w8a8", "w4a16", "fp8_e4m3"]
N_INPUTS, N_CALIBRATION, BATCH = 37, 20, 8


class SmallCNN(nn.Module):
    calls = 0  # forward passes in this process, to show that bad input stops before any

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        SmallCNN.calls += 1
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(h.mean(dim=(2, 3)))


class SmallTransformer(nn.Module):
    """Token projection, one pre-norm encoder block (nn.MultiheadAttention, MLP), mean pool, head."""

    def __init__(self, d_in=12, d=32, n_classes=5):
        super().__init__()
        self.embed = nn.Linear(d_in, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 4, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.head = nn.Linear(d, n_classes)

    def forward(self, x):
        h = self.embed(x)
        a = self.norm1(h)
        h = h + self.attn(a, a, a, need_weights=False)[0]
        h = h + self.mlp(self.norm2(h))
        return self.head(h.mean(dim=1))


def build_cnn():
    torch.manual_seed(0)
    return SmallCNN().eval()


def build_transformer():
    torch.manual_seed(1)
    return SmallTransformer().eval()


MODELS = {"cnn": (build_cnn, (1, 8, 8)), "transformer": (build_transformer, (6, 12))}


def make_inputs(kind, seed=0):
    shape = MODELS[kind][1]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N_INPUTS, *shape, generator=gen)
    cal = torch.randn(N_CALIBRATION, *shape, generator=gen)
    return x, cal


def single_process_sweep(kind):
    build, _ = MODELS[kind]
    x, cal = make_inputs(kind)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the torchrun workers (OMP_NUM_THREADS=1)
    try:
        return sweep(build(), x, CONFIGS, calibration_data=cal, batch_size=BATCH, progress=False)
    finally:
        torch.set_num_threads(threads)


def _torchrun(args, cwd, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return proc


# ------------------------------------------------------------------ end to end (torchrun)
@pytest.fixture(scope="module")
def torchrun_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    proc = _torchrun([str(Path(__file__).resolve()), str(out)], cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_torchrun_sweep_equals_single_process_bit_for_bit_on_every_rank(torchrun_results, kind):
    reference = single_process_sweep(kind)
    assert not np.array_equal(reference["w8a8"], reference["fp32"])  # the configs do something
    assert not np.array_equal(reference["w4a16"], reference["fp32"])
    for rank in (0, 1):
        with np.load(torchrun_results / f"{kind}-rank{rank}.npz") as got:
            assert list(got.files) == CONFIGS
            for name in CONFIGS:
                assert got[name].shape == (N_INPUTS, 5) and got[name].dtype == np.float32
                np.testing.assert_array_equal(got[name], reference[name], err_msg=f"{kind} {name} rank {rank}")


@pytest.mark.slow
@pytest.mark.parametrize("scenario, match_0, match_1", [
    ("configs", "disagree on the sweep's configs", "disagree on the sweep's configs"),
    ("length", "disagree on the sweep's input length.*rank 0: 37 rows; rank 1: 36 rows",
     "disagree on the sweep's input length"),
    ("inputs", "disagree on the sweep's first and last inputs", "disagree on the sweep's first and last inputs"),
    ("weights", "disagree on the sweep's model weights", "disagree on the sweep's model weights"),
    ("bad_config", "RankFailedError: Rank 1 of 2 failed its input checks: ValueError: Unknown config 'fp33'",
     "ValueError: Unknown config 'fp33'"),
    ("calibration", "ValueError: Config 'w8a8' was calibrated to different values on rank 0 and rank\\(s\\) \\[1\\]",
     "ValueError: Config 'w8a8' was calibrated to different values"),
])
def test_torchrun_ranks_that_disagree_all_raise_before_any_forward_pass(torchrun_results, scenario, match_0,
                                                                         match_1):
    import re

    for rank, match in ((0, match_0), (1, match_1)):
        report = json.loads((torchrun_results / f"bad-{scenario}-rank{rank}.json").read_text())
        assert re.search(match, report["error"]), report["error"]
        if scenario != "calibration":  # calibration runs the calibration data, never the inputs
            assert report["forward_calls"] == 0


@pytest.mark.slow
def test_torchrun_cli_writes_one_file_from_rank_0(tmp_path):
    x, cal = make_inputs("cnn")
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "cal.npy", cal.numpy())
    out = tmp_path / "out" / "logits.npz"
    out.parent.mkdir()
    proc = _torchrun(["-m", "precal", "sweep", "tests.emulate.test_distributed_sweep:build_cnn",
                      str(tmp_path / "x.npy"), "--calibration-inputs", str(tmp_path / "cal.npy"),
                      "--configs", ",".join(CONFIGS), "--batch-size", str(BATCH), "--device", "cpu",
                      "--out", str(out), "--json"], cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [p.name for p in out.parent.iterdir()] == ["logits.npz"]  # one file, no leftovers
    summary = json.loads(proc.stdout)  # one JSON document: rank 0 alone prints
    assert summary["out"] == str(out) and summary["inputs"]["shape"][0] == N_INPUTS
    reference = single_process_sweep("cnn")
    with np.load(out) as got:
        assert list(got.files) == CONFIGS
        for name in CONFIGS:
            np.testing.assert_array_equal(got[name], reference[name])


EXAMPLE = ROOT / "docs" / "examples" / "distributed_sweep.py"


@pytest.mark.slow
def test_docs_example_prints_the_same_under_torchrun_as_in_one_process(tmp_path, capsys, monkeypatch):
    import runpy

    proc = _torchrun([str(EXAMPLE)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the torchrun workers
    try:
        runpy.run_path(str(EXAMPLE), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
    alone = capsys.readouterr().out
    assert len(alone.splitlines()) == 4  # one line per config
    assert proc.stdout == alone  # rank 0 alone printed, the same numbers


def test_distributed_sweeps_page_shows_the_example_code():
    page = (ROOT / "docs" / "distributed-sweeps.md").read_text()
    code = EXAMPLE.read_text().split('"""', 2)[2].strip()
    assert code in page


# ------------------------------------------------------------------ in one process
def test_distributed_true_without_a_process_group_is_a_clear_error():
    x, cal = make_inputs("cnn")
    SmallCNN.calls = 0
    with pytest.raises(ValueError, match="distributed=True.*init_process_group"):
        sweep(build_cnn(), x, CONFIGS, calibration_data=cal, distributed=True, progress=False)
    with pytest.raises(ValueError, match="init_process_group"):
        sweep(build_cnn(), x, ["fp32"], process_group=object(), progress=False)
    with pytest.raises(ValueError, match="distributed=False"):
        sweep(build_cnn(), x, ["fp32"], distributed=False, process_group=object(), progress=False)
    with pytest.raises(TypeError, match="True, False or None"):
        sweep(build_cnn(), x, ["fp32"], distributed="yes", progress=False)
    assert SmallCNN.calls == 0


def test_distributed_false_or_no_group_is_the_single_process_sweep():
    x, cal = make_inputs("cnn")
    a = sweep(build_cnn(), x, ["fp32", "w8a8"], calibration_data=cal, batch_size=BATCH, progress=False)
    b = sweep(build_cnn(), x, ["fp32", "w8a8"], calibration_data=cal, batch_size=BATCH, progress=False,
              distributed=False)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


@pytest.mark.parametrize("n_batches", [0, 1, 2, 5, 7, 64])
@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
def test_shard_bounds_split_like_array_split(n_batches, world_size):
    bounds = [dist_.shard_bounds(n_batches, world_size, r) for r in range(world_size)]
    expected = [(int(p[0]), int(p[-1]) + 1) if len(p) else None for p in np.array_split(np.arange(n_batches),
                                                                                         world_size)]
    for got, want in zip(bounds, expected):
        if want is None:
            assert got[0] == got[1]
        else:
            assert got == want
    assert bounds[0][0] == 0 and bounds[-1][1] == n_batches
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))  # contiguous, in rank order
    with pytest.raises(ValueError, match="rank"):
        dist_.shard_bounds(n_batches, world_size, world_size)


def _ctx(rank, world_size=2):
    return dist_._Dist(None, rank, world_size)


def test_shards_are_whole_batches_that_cover_the_inputs_in_order():
    x = torch.arange(37 * 2).reshape(37, 2)
    parts = [dist_.shard(x, 8, _ctx(r)) for r in range(2)]
    assert [(len(p), n, total) for p, n, total in parts] == [(24, 3, 5), (13, 2, 5)]
    assert torch.equal(torch.cat([p for p, _, _ in parts]), x)
    tokens = {"input_ids": x, "mask": x.numpy(), "scale": 2.0}
    part, n, _ = dist_.shard(tokens, 8, _ctx(1))
    assert torch.equal(part["input_ids"], x[24:]) and np.array_equal(part["mask"], x.numpy()[24:])
    assert part["scale"] == 2.0 and n == 2
    batches = [x[i : i + 5] for i in range(0, 37, 5)]  # 8 batches
    assert dist_.shard(batches, 999, _ctx(1))[0] == batches[4:]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=10)
    part, n, total = dist_.shard(loader, 999, _ctx(1))
    assert (n, total) == (2, 4)
    got = list(part)
    assert len(got) == 2 and torch.equal(torch.cat([b[0] for b in got]), x[20:])
    assert len(list(part)) == 2  # iterable again


def test_data_a_rank_cannot_shard_is_refused():
    x = torch.randn(10, 3)
    ds = torch.utils.data.TensorDataset(x)
    with pytest.raises(ValueError, match="shuffle=True"):
        dist_.data_length(torch.utils.data.DataLoader(ds, batch_size=2, shuffle=True))
    sampler = torch.utils.data.DistributedSampler(ds, num_replicas=2, rank=0)
    with pytest.raises(ValueError, match="DistributedSampler"):
        dist_.data_length(torch.utils.data.DataLoader(ds, batch_size=2, sampler=sampler))
    with pytest.raises(TypeError, match="length"):
        dist_.data_length(b for b in [x])
    with pytest.raises(ValueError, match="common first dimension"):
        dist_.data_length({"a": x, "b": x[:3]})


def test_digests_see_every_weight_and_buffer():
    a, b = build_cnn(), build_cnn()
    assert dist_.state_digest(a) == dist_.state_digest(b)
    with torch.no_grad():
        b.fc.bias[0] = torch.nextafter(b.fc.bias[0], torch.tensor(1.0))  # one ulp
    assert dist_.state_digest(a) != dist_.state_digest(b)
    x = torch.randn(9, 3)
    y = x.clone()
    y[-1, 0] += 1
    assert dist_.inputs_digest(x, x[:2]) == dist_.inputs_digest(x.clone(), x[:2])
    assert dist_.inputs_digest(x, x[:2]) != dist_.inputs_digest(y, y[:2])


# ------------------------------------------------------------------ the torchrun script
def _bad_input_scenarios(rank):
    """Each scenario: sweep() arguments for this rank that some other rank does not share."""
    x, cal = make_inputs("cnn")
    model = build_cnn()
    other = build_cnn()
    with torch.no_grad():
        other.fc.bias[0] += 1.0
    args = dict(calibration_data=cal, batch_size=BATCH, progress=False)
    return {
        "configs": (model, x, CONFIGS if rank == 0 else CONFIGS[:2], args),
        "length": (model, x if rank == 0 else x[:-1], CONFIGS, args),
        "inputs": (model, x if rank == 0 else x + 1, CONFIGS, args),
        "weights": (model if rank == 0 else other, x, CONFIGS, args),
        "bad_config": (model, x, CONFIGS if rank == 0 else ["fp32", "fp33"], args),
        "calibration": (model, x, CONFIGS, {**args, "calibration_data": cal if rank == 0 else cal * 2}),
    }


def _worker(out: Path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    try:
        for kind, (build, _) in MODELS.items():
            x, cal = make_inputs(kind)
            logits = sweep(build(), x, CONFIGS, calibration_data=cal, batch_size=BATCH, progress=False)
            np.savez(out / f"{kind}-rank{rank}.npz", **logits)
        for scenario, (model, x, configs, args) in _bad_input_scenarios(rank).items():
            SmallCNN.calls = 0
            try:
                sweep(model, x, configs, **args)
                error = "no error"
            except (ValueError, RuntimeError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            report = {"error": error, "forward_calls": SmallCNN.calls}
            (out / f"bad-{scenario}-rank{rank}.json").write_text(json.dumps(report))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
