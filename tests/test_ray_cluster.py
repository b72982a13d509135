"""A node of a simulated 2-node Ray cluster is removed mid-search: its trial runs again on
the other node, and the database ends with every trial once, completed."""

from __future__ import annotations

from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from nas.search import Search, SearchOptions  # noqa: E402
from nas.storage import Store  # noqa: E402
from nas.workers import RayDispatcher  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "searchspaces" / "quickstart.cell"


@pytest.fixture
def two_nodes():
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    try:
        yield cluster, worker
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_node_removed_mid_search_its_trial_is_rescheduled(two_nodes, tmp_path):
    cluster, worker = two_nodes
    store = Store.open(tmp_path / "nas.db")
    search = Search.create(store, QUICK, SearchOptions(trials=6, seed=7, train_overrides={"steps": 150}), name="node")
    on_worker: set[int] = set()
    removed: list[int] = []

    class RemoveNode(RayDispatcher):
        def poll(self, handle, timeout=None):
            def h(ev):
                if ev.kind == "started" and ev.node == worker.node_id:
                    on_worker.add(ev.trial_id)
                if ev.kind == "report" and not removed and ev.trial_id in on_worker:
                    removed.append(ev.trial_id)  # it is mid-training on the worker node: remove that node
                    cluster.remove_node(worker)
                return handle(ev)

            return super().poll(h, timeout)

    d = RemoveNode(max_retries=2)
    assert d.capacity == 2
    search.run(dispatcher=d)
    assert removed, "no trial ran on the worker node"
    trials = store.trials("node")
    assert sorted(t.trial_index for t in trials) == list(range(6))
    assert {t.status for t in trials} == {"completed"}
    moved = next(t for t in trials if t.id == removed[0])
    assert moved.attempt == 2  # started again, on the head node
    assert all(t.attempt == 1 for t in trials if t.id != removed[0])
