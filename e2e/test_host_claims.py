"""What concurrent e2e sessions on one machine claim, so they cannot reach each other's pods:
each local cluster's kwok a /16 of pod IPs (e2e/cluster.py), and the machine's one real node
(e2e/realnode.py). Pure logic over claim files in a temporary folder; no cluster."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from e2e import cluster, realnode


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_each_cluster_claims_its_own_pod_range_and_takes_over_a_dead_ones(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cluster, "POD_CIDR_CLAIMS", tmp_path)
    claims = [cluster.claim_pod_cidr() for _ in range(63)]
    ranges = [cidr for cidr, _ in claims]
    assert len(set(ranges)) == 63  # 127.65/16 .. 127.127/16, each once
    assert "127.64.0.0/16" not in ranges
    with pytest.raises(cluster.ClusterError, match="every pod range"):
        cluster.claim_pod_cidr()
    # A cluster whose kwok is gone leaves its range to the next one.
    cidr, claim = claims[10]
    claim.write_text(str(_dead_pid()))
    assert cluster.claim_pod_cidr() == (cidr, claim)
    assert claim.read_text() == str(os.getpid())
    # A claim just created, its claimer's pid not written yet, is held: not taken over.
    claims[20][1].write_text("")
    with pytest.raises(cluster.ClusterError, match="every pod range"):
        cluster.claim_pod_cidr()


def test_one_real_node_per_machine_waits_then_names_the_holder(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    claim = tmp_path / "real-node.claim"
    monkeypatch.setattr(realnode, "HOST_CLAIM", claim)
    mine, other = tmp_path / "mine", tmp_path / "other"
    # A live holder (this process) for another cluster: refused after the wait, named.
    claim.write_text(json.dumps({"pid": os.getpid(), "state_dir": str(other)}))
    with pytest.raises(realnode.RealNodeError, match=f"real node runs on this machine \\({other}"):
        realnode._claim_host(mine, timeout=0)
    # Its kubelet gone: taken over.
    claim.write_text(json.dumps({"pid": _dead_pid(), "state_dir": str(other)}))
    realnode._claim_host(mine, timeout=0)
    assert json.loads(claim.read_text()) == {"pid": os.getpid(), "state_dir": str(mine)}
    realnode._hold_host(mine, 4242)
    assert json.loads(claim.read_text())["pid"] == 4242
    realnode._release_host(other)  # not its claim: kept
    assert claim.exists()
    realnode._release_host(mine)
    assert not claim.exists()
