"""Multi-node runs (`resources.nodes`): the torchrun argv, node settings, spec checks,
and two "nodes" on this CPU matching one node.

The end-to-end test starts real workers: one node with two ranks, then two nodes of
one rank each, every node in a store of its own (as on two machines) and meeting
through a static TCP rendezvous on 127.0.0.1, gloo on loopback. Same global batch,
same split by global rank, same all-reduce: the losses must agree.
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers import wait_for
from tests.test_pretrain import ckpt, losses, tiny
from workbench.hosts import Host, save_hosts
from workbench.launch import local
from workbench.launch.distributed import node_settings, rank_env, torchrun_command
from workbench.launch.local import Launched
from workbench.procs import descendants, kill_tree, pid_alive
from workbench.run_record import RunRecord
from workbench.spec import LoadedSpec, SpecError, parse_spec
from workbench.store import Store, StoreError

STEPS = 6


def spec_text(procs: int, nodes: int) -> str:
    text = tiny(opt="muonclip", steps=STEPS, ckpt=STEPS)
    return text.replace("[train]", f"[resources]\nprocs = {procs}\nnodes = {nodes}\n[train]")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config_of(store: Store, run_id: str) -> dict[str, Any]:
    return dict(store.get_run(run_id).config)


def wait_finished(store: Store, launched: Launched, timeout: float) -> RunRecord:
    """Reap the worker, then read its ending; bounded in time."""
    row = launched.record
    launched.process.wait(timeout=timeout)
    done = wait_for(lambda: (r := store.get_run(row.id)).status not in
                    ("queued", "running") and r, 30, "the run's ending")
    assert done.status == "finished", (store.run_dir(row.id) / "stdout.log"
                                       ).read_text()[-3000:]
    return done


def cleanup(started: list[tuple[Store, Launched]]) -> None:
    """Kill whatever a failed test left running (worker, torchrun, ranks)."""
    for _, launched in started:
        pid = launched.record.pid
        if pid and pid_alive(pid):
            kill_tree(pid)
        proc = launched.process
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


# ---------------------------------------------------------------------- torchrun argv


def test_one_node_keeps_standalone() -> None:
    argv = torchrun_command("r1", 2)
    assert argv[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--standalone" in argv and "--nproc_per_node=2" in argv
    assert not any(a.startswith(("--nnodes", "--node_rank", "--master")) for a in argv)
    assert argv[-3:] == ["-m", "workbench.launch.distributed", "r1"]


def test_two_nodes_use_static_rendezvous_on_the_master() -> None:
    argv = torchrun_command("r7", 4, nodes=2, node_rank=1, master=("10.0.0.5", 29411))
    assert argv == [sys.executable, "-m", "torch.distributed.run", "--nnodes=2",
                    "--node_rank=1", "--rdzv_backend=static", "--master_addr=10.0.0.5",
                    "--master_port=29411",
                    "--nproc_per_node=4", "--max_restarts=0",
                    "-m", "workbench.launch.distributed", "r7"]
    with pytest.raises(ValueError, match="master"):
        torchrun_command("r7", 1, nodes=2, node_rank=0)
    with pytest.raises(ValueError, match="node rank 2"):
        torchrun_command("r7", 1, nodes=2, node_rank=2, master=("h", 1))


def test_gloo_is_pinned_to_loopback_only_for_a_loopback_master(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    assert rank_env(2)["GLOO_SOCKET_IFNAME"] == "lo"  # one node
    assert rank_env(1, "127.0.0.1")["GLOO_SOCKET_IFNAME"] == "lo"
    assert rank_env(1, "localhost")["GLOO_SOCKET_IFNAME"] == "lo"
    assert "GLOO_SOCKET_IFNAME" not in rank_env(1, "10.0.0.5")  # between machines
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "eth1")
    assert rank_env(1, "10.0.0.5")["GLOO_SOCKET_IFNAME"] == "eth1"  # the user's choice


# ---------------------------------------------------------------------- node settings


def resources(*items: str) -> Any:
    return parse_spec(tiny(), list(items)).resources


def test_node_settings_from_the_environment() -> None:
    one = resources()
    assert node_settings(one, {}) == (0, None)
    two = resources("resources.nodes=2")
    assert node_settings(two, {}) == (0, ("127.0.0.1", 29400))  # every node here
    assert node_settings(two, {"WB_NODE_RANK": "1", "WB_MASTER_ADDR": "10.0.0.5",
                               "WB_MASTER_PORT": "29411"}) == (1, ("10.0.0.5", 29411))
    with pytest.raises(ValueError, match=r"WB_NODE_RANK=2 but resources.nodes is 2"):
        node_settings(two, {"WB_NODE_RANK": "2"})
    with pytest.raises(ValueError, match="WB_NODE_RANK=1 but resources.nodes is 1"):
        node_settings(one, {"WB_NODE_RANK": "1"})
    with pytest.raises(ValueError, match="WB_MASTER_PORT='x' is not a port"):
        node_settings(two, {"WB_MASTER_PORT": "x"})


def test_a_node_on_another_machine_needs_the_master_address() -> None:
    save_hosts({"gpu1": Host(name="gpu1", dest="me@gpu1")})
    res = resources("resources.nodes=2", 'resources.hosts=["local", "gpu1"]')
    with pytest.raises(ValueError, match="needs WB_MASTER_ADDR"):
        node_settings(res, {"WB_NODE_RANK": "1"})
    assert node_settings(res, {"WB_NODE_RANK": "1", "WB_MASTER_ADDR": "gpu0.lan"}) == \
        (1, ("gpu0.lan", 29400))


def test_local_start_refuses_a_bad_master_before_creating_the_run(store: Store) -> None:
    loaded = LoadedSpec(parse_spec(spec_text(1, 2)), "tiny.toml")
    with pytest.raises(StoreError, match="port must be a number"):
        local.start(store, loaded, node_rank=1, master="127.0.0.1:abc")
    assert store.runs() == []


# ---------------------------------------------------------------------- spec checks


def test_hosts_must_match_nodes_and_be_configured() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(tiny(), ["resources.nodes=2", 'resources.hosts=["local"]'])
    msg = str(info.value)
    assert msg.startswith("resources.hosts: lists 1 host(s) but resources.nodes is 2")
    assert "--set resources.hosts=VALUE" in msg and "\n" not in msg
    with pytest.raises(SpecError, match="resources.hosts: host 'gpu9' is not configured"):
        parse_spec(tiny(), ["resources.nodes=2", 'resources.hosts=["local", "gpu9"]'])
    save_hosts({"gpu1": Host(name="gpu1", dest="me@gpu1"),
                "gpu2": Host(name="gpu2", dest="me@gpu2")})
    with pytest.raises(SpecError, match="node 0 runs on the first host .'gpu1'. but "
                                        "resources.host is 'gpu2'"):
        parse_spec(tiny(), ["resources.host=gpu2", "resources.nodes=2",
                            'resources.hosts=["gpu1", "gpu2"]'])
    ok = parse_spec(tiny(), ["resources.host=gpu1", "resources.nodes=2",
                             'resources.hosts=["gpu1", "gpu2"]'])
    assert ok.resources.hosts == ["gpu1", "gpu2"]


def test_only_a_per_rank_kind_spans_nodes() -> None:
    script = 'kind = "script"\nname = "s"\n[script]\ncommand = ["python", "t.py"]\n'
    with pytest.raises(SpecError) as info:
        parse_spec(script, ["resources.nodes=2"])
    assert "a script runs on one node — set resources.nodes = 1" in str(info.value)
    assert "\n" not in str(info.value)
    assert parse_spec(script).resources.nodes == 1


def test_every_rank_of_every_node_takes_an_equal_share() -> None:
    with pytest.raises(SpecError, match=r"resources.nodes \* resources.procs \(4 \* 1\) must "
                                        r"divide the micro-batch"):
        parse_spec(tiny(), ["resources.nodes=4", "train.batch_size=6"])
    assert parse_spec(tiny(), ["resources.nodes=2", "resources.procs=2"]).resources.nodes == 2


# ---------------------------------------------------------------------- end to end


def test_two_nodes_match_one_node_with_the_same_global_batch(store: Store,
                                                             tmp_path: Path) -> None:
    started: list[tuple[Store, Launched]] = []
    stores = [Store(tmp_path / "node0"), Store(tmp_path / "node1")]
    try:
        t0 = time.monotonic()
        one = local.start(store, LoadedSpec(parse_spec(spec_text(2, 1)), "tiny.toml"))
        started.append((store, one))
        wait_finished(store, one, timeout=180)
        t1 = time.monotonic()

        port = free_port()
        loaded = LoadedSpec(parse_spec(spec_text(1, 2)), "tiny.toml")
        nodes: list[Launched] = []
        for rank, st in enumerate(stores):
            node = local.start(st, loaded, node_rank=rank, master=f"127.0.0.1:{port}")
            started.append((st, node))
            nodes.append(node)
        for st, node in zip(stores, nodes, strict=True):
            wait_finished(st, node, timeout=180)
        t2 = time.monotonic()
        print(f"one node {t1 - t0:.1f}s, two nodes {t2 - t1:.1f}s")

        a = losses(store, one.record.id)
        b = losses(stores[0], nodes[0].record.id)
        print("one node  train/loss", a)
        print("two nodes train/loss", b)
        assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
        for step in a:  # gloo sums 2 ranks the same way: bitwise equal here
            assert b[step] == pytest.approx(a[step], rel=1e-6, abs=1e-7), step
        va, vb = losses(store, one.record.id, "val/loss"), losses(stores[0], nodes[0].record.id,
                                                               "val/loss")
        assert vb[STEPS] == pytest.approx(va[STEPS], rel=1e-6)
        wa, wb_ = ckpt(store, one.record.id, STEPS), ckpt(stores[0], nodes[0].record.id, STEPS)
        assert wa.keys() == wb_.keys()
        for k in wa:
            torch.testing.assert_close(wb_[k], wa[k], rtol=1e-6, atol=1e-7)

        # Node 0 holds global rank 0: metrics, the checkpoint and world_size 2.
        n0, n1 = config_of(stores[0], nodes[0].record.id), config_of(stores[1], nodes[1].record.id)
        assert n0["world_size"] == config_of(store, one.record.id)["world_size"] == 2
        assert (n0["node_rank"], n0["nodes"], n0["master"]) == (0, 2, f"127.0.0.1:{port}")
        assert len(stores[0].events(nodes[0].record.id, kind="checkpoint")) == 1
        # Node 1 records its own status and output, but no metrics nor checkpoints.
        assert (n1["node_rank"], n1["nodes"]) == (1, 2)
        assert stores[1].scalars(nodes[1].record.id, "train/loss") == []
        assert stores[1].events(nodes[1].record.id, kind="checkpoint") == []
        assert not list(stores[1].run_dir(nodes[1].record.id).glob("checkpoints/step-*"))
        out0 = (stores[0].run_dir(nodes[0].record.id) / "stdout.log").read_text()
        out1 = (stores[1].run_dir(nodes[1].record.id) / "stdout.log").read_text()
        assert "node 0/2: starting 1 of 2 ranks" in out0 and "x 2 processes" in out0
        assert "node 1/2: starting 1 of 2 ranks" in out1
        assert f"step {STEPS}/{STEPS}" not in out1  # global rank 0 alone prints
    finally:
        leftovers = [p for _, run in started if run.record.pid
                     for p in descendants(run.record.pid)]
        cleanup(started)
        for pid in leftovers:
            if pid_alive(pid):
                kill_tree(pid)
        for st in stores:
            st.close()
