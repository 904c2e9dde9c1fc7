"""The thread policy: cgroup quota and affinity, configuration, the caller's limits, identical results."""

import threading

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from precal import PACSCalibrator, TemperatureScaling
from precal import _threads
from precal._threads import (
    available_cpus,
    cgroup_cpu_quota,
    config_context,
    get_config,
    map_blocks,
    map_blocks_in_waves,
    set_config,
    thread_budget,
    thread_limits,
    threaded,
)
from precal.calibration import _blocks
from precal.calibration.temperature import fit_temperature, temperature_nll_derivatives

from .conftest import make_logits

BIG = 1 << 30  # elements: far above MIN_PARALLEL_ELEMENTS


@pytest.fixture(autouse=True)
def _pools_of_three():
    """Every OpenMP/BLAS pool and torch's at 3 threads (whatever OMP_NUM_THREADS says), restored after."""
    saved = torch.get_num_threads()
    with threadpool_limits(limits=3):
        torch.set_num_threads(3)
        yield
    torch.set_num_threads(saved)
    set_config(n_threads=None)


def _cgroup(tmp_path, own="0::/\n", files=None):
    """A fake cgroup tree: ``files`` maps paths below the root to their contents."""
    root = tmp_path / "cgroup"
    root.mkdir()
    for rel, text in (files or {}).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(own)
    return root, proc


# --------------------------------------------------------------------------- cgroup quota
@pytest.mark.parametrize("text, expected", [("150000 100000\n", 1.5), ("200000 100000", 2.0),
                                            ("max 100000\n", None), ("50000 100000", 0.5)])
def test_cgroup_v2_cpu_max(tmp_path, text, expected):
    root, proc = _cgroup(tmp_path, files={"cpu.max": text})
    assert cgroup_cpu_quota(root, proc) == expected


def test_cgroup_v2_smallest_limit_along_the_own_path_applies(tmp_path):
    files = {"kubepods/pod1/cpu.max": "300000 100000", "kubepods/pod1/ctr/cpu.max": "max 100000",
             "cpu.max": "max 100000", "other/cpu.max": "100000 100000"}
    root, proc = _cgroup(tmp_path, own="0::/kubepods/pod1/ctr\n", files=files)
    assert cgroup_cpu_quota(root, proc) == 3.0  # "other" is not on the process's path


@pytest.mark.parametrize("controller_dir", ["cpu", "cpu,cpuacct", "cpuacct,cpu"])
def test_cgroup_v1_quota_and_period(tmp_path, controller_dir):
    files = {f"{controller_dir}/cpu.cfs_quota_us": "250000\n", f"{controller_dir}/cpu.cfs_period_us": "100000\n"}
    root, proc = _cgroup(tmp_path, own="4:cpu,cpuacct:/docker/abc\n1:name=systemd:/\n", files=files)
    assert cgroup_cpu_quota(root, proc) == 2.5


def test_cgroup_v1_limit_in_the_own_cgroup(tmp_path):
    files = {"cpu/docker/abc/cpu.cfs_quota_us": "150000", "cpu/docker/abc/cpu.cfs_period_us": "100000",
             "cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}
    root, proc = _cgroup(tmp_path, own="3:cpu:/docker/abc\n", files=files)
    assert cgroup_cpu_quota(root, proc) == 1.5


@pytest.mark.parametrize("files", [
    {},  # no cgroup file system
    {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"},  # v1, no limit
    {"cpu.max": "garbage"},
    {"cpu.max": "abc 100000"},
    {"cpu.max": "100000 0"},
    {"cpu/cpu.cfs_quota_us": "100000"},  # period missing
])
def test_no_quota(tmp_path, files):
    root, proc = _cgroup(tmp_path, files=files)
    assert cgroup_cpu_quota(root, proc) is None


def test_missing_proc_file_reads_the_root_only(tmp_path):
    root, _ = _cgroup(tmp_path, files={"cpu.max": "100000 100000"})
    assert cgroup_cpu_quota(root, tmp_path / "absent") == 1.0


@pytest.mark.parametrize("quota_text, affinity, expected", [
    ("250000 100000", 8, 2),   # the quota, rounded down
    ("50000 100000", 8, 1),    # at least one
    ("max 100000", 8, 8),      # no quota: the affinity
    ("1600000 100000", 4, 4),  # a quota above the affinity
])
def test_available_cpus_is_the_affinity_capped_by_the_quota(tmp_path, monkeypatch, quota_text, affinity, expected):
    monkeypatch.setattr(_threads.os, "sched_getaffinity", lambda pid: set(range(affinity)), raising=False)
    root, proc = _cgroup(tmp_path, files={"cpu.max": quota_text})
    available_cpus.cache_clear()
    try:
        assert available_cpus(root, proc) == expected
    finally:
        available_cpus.cache_clear()


def test_available_cpus_on_this_machine_is_at_most_the_affinity():
    import os

    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))


# --------------------------------------------------------------------------- configuration
def test_config_default_and_set():
    assert get_config() == {"n_threads": None}
    set_config(n_threads=3)
    assert get_config()["n_threads"] == 3
    set_config()  # nothing given: unchanged
    assert get_config()["n_threads"] == 3
    set_config(n_threads=None)
    assert get_config()["n_threads"] is None


def test_config_context_nests_and_restores():
    with config_context(n_threads=2):
        assert get_config()["n_threads"] == 2
        with config_context(n_threads=1):
            assert get_config()["n_threads"] == 1
        with config_context():
            assert get_config()["n_threads"] == 2
        assert get_config()["n_threads"] == 2
    assert get_config()["n_threads"] is None


def test_config_context_restores_after_an_exception():
    with pytest.raises(RuntimeError, match="boom"):
        with config_context(n_threads=1):
            raise RuntimeError("boom")
    assert get_config()["n_threads"] is None


def test_get_config_returns_a_copy():
    get_config()["n_threads"] = 5
    assert get_config()["n_threads"] is None


@pytest.mark.parametrize("value, exc", [(0, ValueError), (-2, ValueError), (True, TypeError),
                                        (1.5, TypeError), ("2", TypeError)])
def test_bad_n_threads(value, exc):
    with pytest.raises(exc, match="n_threads"):
        set_config(n_threads=value)
    with pytest.raises(exc, match="n_threads"):
        with config_context(n_threads=value):
            pass
    assert get_config()["n_threads"] is None


def test_config_is_per_thread():
    seen = []
    with config_context(n_threads=1):
        t = threading.Thread(target=lambda: seen.append(get_config()["n_threads"]))
        t.start()
        t.join()
    assert seen == [None]


# --------------------------------------------------------------------------- budget and limits
def test_small_work_runs_on_one_thread():
    with config_context(n_threads=4):
        assert thread_budget(_threads.MIN_PARALLEL_ELEMENTS - 1) == 1


def test_budget_follows_the_configuration_within_the_callers_torch_limit():
    with config_context(n_threads=2):
        assert thread_budget(BIG) == 2
    with config_context(n_threads=8):
        assert thread_budget(BIG) <= 3  # the caller's torch pool caps it
    torch.set_num_threads(1)
    with config_context(n_threads=4):
        assert thread_budget(BIG) == 1


def test_thread_limits_sets_and_restores_torch_threads():
    with config_context(n_threads=2):
        with thread_limits(BIG) as n:
            assert n == 2 and torch.get_num_threads() == 2
        with thread_limits(BIG, torch_threads=1) as n:
            assert n == 2 and torch.get_num_threads() == 1
        with thread_limits(10) as n:
            assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == 3


def test_thread_limits_restores_after_an_exception():
    with pytest.raises(RuntimeError):
        with config_context(n_threads=1), thread_limits(BIG):
            assert torch.get_num_threads() == 1
            raise RuntimeError
    assert torch.get_num_threads() == 3


def _blas_threads():
    return [(lib["filepath"], lib["num_threads"]) for lib in threadpool_info()]


def test_thread_limits_caps_and_restores_openmp_and_blas_pools():
    before = _blas_threads()
    with config_context(n_threads=1), thread_limits(BIG):
        assert all(n <= 1 for _, n in _blas_threads())
    assert _blas_threads() == before


def test_thread_limits_can_hold_blas_to_one_thread_within_a_larger_budget():
    before = _blas_threads()
    with threadpool_limits(limits=2), config_context(n_threads=2):
        inside = {lib["filepath"]: lib for lib in threadpool_info()}
        with thread_limits(BIG, blas_threads=1) as n:
            assert n == 2
            for lib in threadpool_info():
                if lib["user_api"] == "blas":
                    assert lib["num_threads"] == 1
                else:  # OpenMP keeps the budget
                    assert lib["num_threads"] == min(2, inside[lib["filepath"]]["num_threads"])
    assert _blas_threads() == before


def test_budget_is_capped_by_any_openmp_or_blas_pool():
    with threadpool_limits(limits=1, user_api="blas"), config_context(n_threads=2):
        assert thread_budget(BIG) == 1


def test_a_users_threadpoolctl_limit_caps_precal_and_stays():
    z, y = make_logits(n=2000, k=5)
    with threadpool_limits(limits=1):
        inside = _blas_threads()
        assert thread_budget(BIG) == 1
        TemperatureScaling().fit(z, y)
        assert _blas_threads() == inside  # precal restored the user's limits
        assert torch.get_num_threads() == 1


def test_threaded_decorator_uses_the_largest_array_argument():
    seen = []

    @threaded
    def work(a, b, scale=1.0):
        seen.append(torch.get_num_threads())
        return a.sum() + b.sum()

    with config_context(n_threads=2):
        work(np.ones(3), np.ones(2))  # tiny: one thread
        work(np.ones(3), torch.ones(_threads.MIN_PARALLEL_ELEMENTS))
    assert seen == [1, 2]
    assert torch.get_num_threads() == 3
    assert work.__name__ == "work"


# --------------------------------------------------------------------------- block pool
def test_map_blocks_keeps_the_order():
    assert map_blocks(lambda x: x * x, list(range(50)), 3) == [x * x for x in range(50)]
    assert map_blocks(lambda x: x, [], 3) == []


def test_map_blocks_runs_blocks_on_several_threads_at_once():
    barrier = threading.Barrier(2, timeout=30)  # fails unless two blocks run at the same time

    def block(i):
        if i < 2:
            barrier.wait()
        return threading.get_ident()

    idents = map_blocks(block, list(range(6)), 2)
    assert len(set(idents[:2])) == 2


def test_map_blocks_on_one_thread_is_a_plain_loop():
    caller = threading.get_ident()
    assert set(map_blocks(lambda _: threading.get_ident(), list(range(5)), 1)) == {caller}


def test_map_blocks_in_waves_streams_results_in_order_with_bounded_waves(monkeypatch):
    import precal._threads as threads

    waves = []
    real = threads.map_blocks
    monkeypatch.setattr(threads, "map_blocks", lambda fn, blocks, n: waves.append(len(blocks)) or real(fn, blocks, n))
    out = list(map_blocks_in_waves(lambda x: x * x, list(range(23)), 3, result_bytes=100, wave_bytes=500))
    assert out == [x * x for x in range(23)]
    assert waves == [5, 5, 5, 5, 3]  # 500 bytes of results at a time
    assert list(map_blocks_in_waves(lambda x: x, list(range(4)), 4, result_bytes=100, wave_bytes=1)) == [0, 1, 2, 3]
    assert waves[-1] == 4  # never fewer blocks per wave than threads
    lazy = map_blocks_in_waves(lambda x: x, list(range(3)), 1, result_bytes=8)
    assert next(lazy) == 0  # one thread: a plain loop, one result at a time


def test_map_blocks_passes_exceptions_on():
    def block(i):
        if i == 3:
            raise ValueError("block 3")
        return i

    with pytest.raises(ValueError, match="block 3"):
        map_blocks(block, list(range(8)), 2)


def test_blocks_run_single_threaded_torch_kernels():
    seen = set()
    with config_context(n_threads=2), thread_limits(BIG, torch_threads=1) as n:
        map_blocks(lambda _: seen.add(torch.get_num_threads()), list(range(8)), n)
    assert seen == {1}


# --------------------------------------------------------------------------- identical results
@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 512 elements and threads from the first element: many blocks on small data."""
    monkeypatch.setattr(_blocks, "CHUNK_ELEMENTS", 512)
    monkeypatch.setattr(_threads, "MIN_PARALLEL_ELEMENTS", 0)
    used = []
    real = _blocks.map_blocks

    def spy(fn, blocks, n_threads):
        used.append(min(n_threads, len(blocks)))
        return real(fn, blocks, n_threads)

    monkeypatch.setattr(_blocks, "map_blocks", spy)
    return used


def _fits(z, y, w=None):
    ts = TemperatureScaling().fit(z, y, sample_weight=w)
    pacs = PACSCalibrator().fit(z, y, sample_weight=w)
    zt, yt = torch.from_numpy(np.asarray(z, dtype=np.float32)), torch.from_numpy(y)
    return (ts.temperature_, ts.n_iter_, pacs.temperature_, pacs.lambda_, pacs.n_iter_,
            fit_temperature(zt, yt).temperature, temperature_nll_derivatives(zt, yt, 0.7))


@pytest.mark.parametrize("k", [7, 40])  # class-major and row-major blocks
@pytest.mark.parametrize("weighted", [False, True])
def test_fits_are_identical_for_any_thread_count(small_blocks, k, weighted):
    z, y = make_logits(n=1500, k=k, scale=4.0, seed=k)
    z = z.astype(np.float32)
    w = np.random.default_rng(0).uniform(0.1, 2.0, size=len(y)) if weighted else None
    results = {}
    for n_threads in (1, 2, 3):
        with config_context(n_threads=n_threads):
            results[n_threads] = _fits(z, y, w)
    assert results[1] == results[2] == results[3]  # bit for bit
    assert max(small_blocks) > 1  # the passes did run on several threads


def test_streamed_memmap_fit_equals_the_in_memory_fit(small_blocks, tmp_path):
    z, y = make_logits(n=1200, k=9, scale=4.0, seed=3)
    z = z.astype(np.float32)
    path = tmp_path / "z.npy"
    np.save(path, z)
    mm = np.load(path, mmap_mode="r")
    with config_context(n_threads=2):
        streamed = TemperatureScaling().fit(mm, y).temperature_
        in_memory = TemperatureScaling().fit(z, y).temperature_
    np.testing.assert_allclose(streamed, in_memory, rtol=1e-6)  # class-major vs row-major sums


def test_work_buffers_are_reused_per_slot_dtype_and_thread():
    buffers = _blocks.WorkBuffers(min_elements=64)
    like = torch.zeros(3, 4)
    a = buffers(0, like)
    assert a.shape == (3, 4) and a.dtype == torch.float32 and a.is_contiguous()
    assert buffers(0, torch.zeros(5, 2)).data_ptr() == a.data_ptr()  # same slot and dtype: same memory
    assert buffers(1, like).data_ptr() != a.data_ptr()  # another slot
    assert buffers(0, like, torch.float64).data_ptr() != a.data_ptr()  # another dtype
    assert buffers(0, like, torch.float64).dtype == torch.float64
    big = buffers(0, torch.zeros(10, 10))  # above min_elements: grows
    assert big.shape == (10, 10) and buffers(0, like).data_ptr() == big.data_ptr()
    other = {}
    thread = threading.Thread(target=lambda: other.setdefault("ptr", buffers(0, like).data_ptr()))
    thread.start()
    thread.join()
    assert other["ptr"] != big.data_ptr()  # each thread has its own
    buffers.clear()
    assert buffers(0, like).data_ptr() != big.data_ptr()  # cleared: a fresh buffer
    off_cpu = torch.empty(2, 2, device="meta")  # off the CPU: a plain empty tensor on the input's device
    assert buffers(0, off_cpu).device.type == "meta" and buffers(0, off_cpu, torch.float64).dtype == torch.float64
    with torch.device("meta"):  # and on the CPU a CPU buffer, whatever the default device
        assert buffers(0, like).device.type == "cpu"
