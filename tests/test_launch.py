"""Multi-node launch (vididi/launch.py): SLURM environment -> torchrun c10d rendezvous options, the
pretrain rule's command, and two local "nodes" (two launchers on localhost, gloo) training one run
to the same weights as a one-launcher torchrun of the same world size."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
import yaml

from vididi.config import expand_runs
from vididi.launch import first_host, head_host, launcher_command, main, torchrun_args
from vididi.layout import run_dir
from vididi.utils import VididiError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("nodelist", "host"),
    [
        ("gpu07", "gpu07"),
        ("gpu[03-05,9]", "gpu03"),
        ("gpu[003-005],cpu1", "gpu003"),
        ("a1,a2", "a1"),
        ("node[1,4-6]", "node1"),
        ("rack[2-3]-n[07-08]", "rack2-n07"),
        ("c1.cluster.org,c2.cluster.org", "c1.cluster.org"),
    ],
)
def test_first_host_of_a_slurm_node_list(nodelist, host):
    assert first_host(nodelist) == host


def test_torchrun_args_from_the_slurm_environment(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # no scontrol: the node list is parsed here
    env = {"SLURM_NNODES": "4", "SLURM_JOB_NODELIST": "gpu[12-15]", "SLURM_JOB_ID": "98765"}
    assert torchrun_args(8, env) == [
        "--nnodes", "4", "--nproc_per_node", "8", "--rdzv_backend", "c10d",
        "--rdzv_endpoint", "gpu12:29500", "--rdzv_id", "98765", "--max_restarts", "0",
    ]  # fmt: skip
    env = {"SLURM_JOB_NUM_NODES": "2", "SLURM_NODELIST": "x1,x2", "VIDIDI_RDZV_PORT": "30001"}
    args = torchrun_args(1, env)
    assert args[args.index("--rdzv_endpoint") + 1] == "x1:30001" and args[args.index("--nnodes") + 1] == "2"
    assert head_host({**env, "VIDIDI_RDZV_HOST": "127.0.0.1"}) == "127.0.0.1"
    with pytest.raises(VididiError, match="SLURM_NNODES"):
        torchrun_args(1, {"SLURM_JOB_NODELIST": "x1"})
    with pytest.raises(VididiError, match="SLURM_JOB_NODELIST"):
        torchrun_args(1, {"SLURM_NNODES": "2"})


def test_launcher_command_per_node_and_gpu_count():
    assert launcher_command(0, 1) == "" and launcher_command(1, 1) == ""  # the plain `vididi pretrain`
    assert launcher_command(4, 1, "/x/python") == "/x/python -m torch.distributed.run --standalone --nproc_per_node 4 -m vididi.cli pretrain"
    cmd = launcher_command(8, 3, "/x/python")
    assert cmd.startswith("srun --nodes 3 --ntasks 3 --ntasks-per-node 1 ")
    assert cmd.endswith(" /x/python -m vididi.launch --nproc-per-node 8 pretrain")


def test_stage_arguments_pass_through_the_launcher(monkeypatch):
    """Every argument after the stage reaches `vididi.cli` untouched (no abbreviation matching)."""
    calls = []
    monkeypatch.setattr(os, "execv", lambda exe, argv: calls.append(argv))
    env = {"SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "n1", "SLURM_JOB_ID": "7"}
    monkeypatch.setattr(os, "environ", {**os.environ, **env})
    main(["--nproc-per-node", "2", "pretrain", "--config", "c.yaml", "--dataset", "d", "--run-name", "r"])
    (argv,) = calls
    assert argv[1:3] == ["-m", "torch.distributed.run"]
    assert argv[argv.index("vididi.cli") :] == ["vididi.cli", "pretrain", "--config", "c.yaml", "--dataset", "d", "--run-name", "r"]
    assert "n1:29500" in argv


def test_pretrain_rule_launches_multi_node_runs_through_srun():
    """The rule's launcher follows `pretrain.nodes` (config schema default 1: the one-node commands)."""
    from vididi.config import resolve

    cfg = resolve({})
    assert cfg["pretrain"]["nodes"] == 1
    common = (REPO / "workflow" / "rules" / "common.smk").read_text()
    assert 'launcher_command(config["pretrain"]["gpus"], config["pretrain"]["nodes"], _python(), stage)' in common


# --------------------------------------------------------------------------------------------------
# Two local "nodes"

TWO_NODE_RUN = {"steps": 4, "batch_size": 8, "lr": 0.001, "warmup_steps": 1, "checkpoint_every": 2}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_run_config(workdir: Path, tiny_data) -> tuple[dict, Path]:
    from conftest import tiny_config

    config = tiny_config(
        workdir,
        data_dir=tiny_data[0]["data_dir"],
        device="cpu",
        threads=1,
        runs=[{"dataset": "synthetic", "framework": "vicreg", "variant": "vididi", "backbone": "small3d", "seed": 0}],
        pretrain={"num_workers": 0, "log_every": 1, **TWO_NODE_RUN},
    )
    path = workdir / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return config, path


@pytest.mark.slow
def test_two_local_nodes_train_like_one_launcher(tmp_path, tiny_data):
    """Two `python -m vididi.launch` (one worker each, as srun would start them on two nodes) meet at
    a c10d rendezvous on localhost; the run must equal a `torchrun --standalone` run with 2 workers
    bit for bit (same world size: the same data per rank, the same gloo reductions)."""
    env = {**os.environ, "VIDIDI_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    single, single_path = one_run_config(tmp_path / "single", tiny_data)
    double, double_path = one_run_config(tmp_path / "two-nodes", tiny_data)
    (run,) = expand_runs(single)
    stage = ["pretrain", "--dataset", "synthetic", "--run-name", run.name]

    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "--master_port", str(free_port()), "-m", "vididi.cli"]  # fmt: skip
    proc = subprocess.run([*torchrun, stage[0], "--config", str(single_path), *stage[1:]],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]

    slurm = {"SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "localhost", "SLURM_JOB_ID": f"test-{uuid.uuid4().hex[:8]}",
             "VIDIDI_RDZV_PORT": str(free_port()), "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}  # fmt: skip
    launch = [sys.executable, "-m", "vididi.launch", "--nproc-per-node", "1", stage[0], "--config", str(double_path), *stage[1:]]
    nodes = [
        subprocess.Popen(launch, cwd=REPO, env={**env, **slurm, "SLURM_NODEID": str(node)},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        for node in (0, 1)
    ]
    outputs = [node.communicate(timeout=300) for node in nodes]
    for node, (_, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-3000:]
    for node, (_, err) in enumerate(outputs):
        assert f"vididi.launch (node {node}):" in err and "--rdzv_backend c10d --rdzv_endpoint localhost:" in err

    out_single, out_double = run_dir(single, run), run_dir(double, run)
    # one process group of both nodes' workers, not two 1-process runs
    assert json.loads((out_double / "train_info.json").read_text())["processes"] == 2
    a = torch.load(out_single / "checkpoints" / "final.pt", map_location="cpu", weights_only=True)
    b = torch.load(out_double / "checkpoints" / "final.pt", map_location="cpu", weights_only=True)
    assert a["encoder"].keys() == b["encoder"].keys()
    different = [k for k in a["encoder"] if not torch.equal(a["encoder"][k], b["encoder"][k])]
    assert not different, f"two-node run differs from the one-launcher run in {different[:5]}"
    # both ranks trained: the logged loss is the all-reduced mean of the two ranks', equal in both runs
    logs = [(out / "train_log.csv").read_text().splitlines() for out in (out_single, out_double)]
    header = logs[0][0].split(",")
    loss = header.index("loss")
    assert len(logs[0]) == 1 + TWO_NODE_RUN["steps"]
    assert [row.split(",")[loss] for row in logs[0][1:]] == [row.split(",")[loss] for row in logs[1][1:]]
