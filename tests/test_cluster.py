"""The precompute run on a local Ray cluster (2 CPUs, 127.0.0.1): the same store as one process,
after a killed worker, and after a killed driver; the ``--ray`` command's errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from helpers import TinyBundleFactory, free_port, make_random_saes, write_word_corpus

from precompute.__main__ import main
from precompute.store_build.accumulate import ReduceConfig
from precompute.store_build.job import Job, RunConfig, collect_windows, shard_ranges

ROOT = Path(__file__).resolve().parent.parent


def _store_content(store: Path) -> dict[str, Any]:
    """The manifest (per-file sha256s included) without the run's timing and date."""
    manifest = json.loads((store / "manifest.json").read_text())

    def strip(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in ("created", "timing")}
        return x

    out = strip(manifest)
    assert out["files"] and all(f["sha256"] for f in out["files"].values())
    return dict(out)


# --- the command's errors (no cluster needed) ---------------------------------------------------


def test_ray_without_ray_installed_is_a_clear_error(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    assert main(["run", "--out", str(tmp_path / "s"), "--ray", "local"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --ray needs Ray") and 'pip install -e ".[cluster]"' in err
    assert "Traceback" not in err and not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--ray-workers", "2"], "error: --ray-workers needs --ray"),
        (["--work-dir", "s3://bucket/w"], "error: a URL as --work-dir needs --ray"),
        (["--ray", "local", "--ray-workers", "0"], "error: --ray-workers must be positive"),
    ],
)
def test_bad_cluster_flags(tmp_path, capsys, argv: list[str], message: str) -> None:
    assert main(["run", "--out", str(tmp_path / "s"), *argv]) == 2
    assert capsys.readouterr().err.strip().startswith(message)


def test_unreachable_ray_address_is_a_clear_error(tmp_path) -> None:
    pytest.importorskip("ray")
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "precompute", "run", "--out", str(tmp_path / "s"), "--ray", address],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert done.stderr.strip().startswith(f"error: cannot reach the Ray cluster at {address}")
    assert "Traceback" not in done.stderr and time.monotonic() - t0 < 60


# --- runs on a local cluster ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    """A local 2-CPU Ray cluster on 127.0.0.1 whose workers import the tests' helpers; its GCS
    address."""
    ray = pytest.importorskip("ray")
    path = os.pathsep.join([str(ROOT), str(ROOT / "tests")])
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=256 * 2**20,
        _node_ip_address="127.0.0.1",
        runtime_env={"env_vars": {"PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}},
        log_to_driver=False,
    )
    yield ray.get_runtime_context().gcs_address, path
    ray.shutdown()


@pytest.fixture(scope="module")
def run_parts(tmp_path_factory, gemma3_hf):
    """The run's config, a factory of the tiny bundle (SAEs on two layers, transcoders on all
    four: both sources), and the single-process reference store."""
    from circuits_helpers import make_transcoders

    tmp = tmp_path_factory.mktemp("cluster")
    saes = make_random_saes(tmp, gemma3_hf)
    make_transcoders(tmp / "tc", 32, 4, width=40, thresholds=(1.8, 2.2))
    factory = TinyBundleFactory(
        tuple((n, str(p)) for n, p in saes.items()),
        transcoder_dirs=tuple((n, str(tmp / "tc" / f"tc{n}")) for n in range(4)),
    )
    cfg = RunConfig(
        corpus=str(write_word_corpus(tmp / "c.jsonl", n_docs=80)),
        tokens=2500,
        context_size=16,
        batch_windows=4,
        shard_tokens=100,
        reduce_memory_mb=0.002,  # about 40 records a block: many reduce tasks per layer
        reduce=ReduceConfig(top_k=5, n_bins=10, n_intervals=3, per_interval=2, before=4, after=2),
    )
    bundle = factory()
    reference = Job(cfg, bundle, tmp / "reference", bundle_meta={"model": "tiny"}).run()
    n_shards = len(shard_ranges(collect_windows(cfg, bundle.tokenizer), cfg.shard_tokens))
    return cfg, factory, bundle, _store_content(reference), n_shards, tmp


def _cluster_job(run_parts, name: str, factory: Any = None, **kw: Any) -> Any:
    from precompute.store_build.cluster import ClusterJob

    cfg, default_factory, bundle, _, _, tmp = run_parts
    return ClusterJob(
        cfg,
        bundle,
        tmp / name,
        bundle_meta={"model": "tiny"},
        factory=factory or default_factory,
        **kw,
    )


def test_cluster_store_equals_the_single_process_store(cluster, run_parts) -> None:
    _, _, _, reference, n_shards, tmp = run_parts
    work = tmp / "url.work"
    job = _cluster_job(run_parts, "url", work_url=work.as_uri())  # file://: the fsspec path
    store = job.run()
    assert _store_content(store) == reference
    assert any(name.startswith("transcoder/") for name in reference["files"])
    assert (job.submitted, job.lost) == (n_shards, 0)
    assert len(list(work.glob("shard-*.npz"))) == n_shards > 10
    assert not list(work.glob(".*.tmp"))
    again = _cluster_job(run_parts, "url2", work_url=str(work))  # every shard is there
    assert _store_content(again.run()) == reference and again.submitted == 0


def test_a_killed_worker_gives_the_same_store(cluster, run_parts) -> None:
    _, factory, _, reference, n_shards, tmp = run_parts
    pids, work = tmp / "pids", tmp / "killed.work"
    pids.mkdir()
    slow = replace(factory, pid_dir=str(pids), delay_s=0.1)
    killed: list[int] = []

    def kill_one_worker_after_the_first_shard() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list(work.glob("shard-*.npz")):
            time.sleep(0.01)
        pid = int(sorted(pids.iterdir())[0].name)
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    killer = threading.Thread(target=kill_one_worker_after_the_first_shard, daemon=True)
    killer.start()
    job = _cluster_job(run_parts, "killed", factory=slow, work_url=str(work))
    store = job.run()
    killer.join(timeout=5)
    assert killed and job.lost == 1
    assert job.submitted == n_shards + 1  # only the lost worker's shard was redone
    assert _store_content(store) == reference


DRIVER = """
import json
import sys
from pathlib import Path
from helpers import TinyBundleFactory
from precompute.store_build.cluster import ClusterJob, connect
from precompute.store_build.job import RunConfig
from precompute.store_build.accumulate import ReduceConfig

address, path, cfg, saes, out = sys.argv[1:]
connect(address, runtime_env={"env_vars": {"PYTHONPATH": path}}, log_to_driver=False)
d = json.loads(cfg)
d = RunConfig(**{
    **d, "layers": tuple(d["layers"]), "sources": tuple(d["sources"]),
    "reduce": ReduceConfig(**d["reduce"]),
})
saes, tcs = json.loads(saes)
factory = TinyBundleFactory(
    tuple((n, p) for n, p in saes), delay_s=0.1, transcoder_dirs=tuple((n, p) for n, p in tcs)
)
job = ClusterJob(d, factory(), Path(out), bundle_meta={"model": "tiny"}, factory=factory)
job.run()
"""


def test_a_killed_driver_resumes_redoing_only_the_missing_shards(cluster, run_parts) -> None:
    from precompute.store_build.storage import WorkDir

    address, path = cluster
    cfg, factory, _, reference, n_shards, tmp = run_parts
    out, work = tmp / "resumed", tmp / "resumed.work"
    env = {**os.environ, "PYTHONPATH": path}
    driver = subprocess.Popen(
        [
            sys.executable,
            "-c",
            DRIVER,
            address,
            path,
            json.dumps(cfg.to_dict()),
            json.dumps([factory.sae_dirs, factory.transcoder_dirs]),
            str(out),
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and len(list(work.glob("shard-*.npz"))) < 2:
            assert driver.poll() is None, "the driver ended before it was killed"
            time.sleep(0.01)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    time.sleep(3)  # the driver's workers die with it
    wd = WorkDir(work)
    present = len(wd.shards())
    assert 2 <= present < n_shards
    job = _cluster_job(run_parts, "resumed", work_url=str(work))
    assert _store_content(job.run()) == reference
    assert job.submitted == n_shards - present
