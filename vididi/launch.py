"""Multi-node launch: one torchrun per node, meeting at a c10d rendezvous, under SLURM.

`pretrain.nodes: N > 1` makes the pretrain rule run

    srun --nodes N --ntasks N --ntasks-per-node 1 python -m vididi.launch --nproc-per-node G pretrain ...

inside an allocation of N nodes. `srun` starts this module once per node; each copy reads the
allocation from SLURM's environment and replaces itself with

    torchrun --nnodes N --nproc_per_node G --rdzv_backend c10d --rdzv_endpoint HEAD:PORT
             --rdzv_id JOB_ID --max_restarts 0 -m vididi.cli pretrain ...

where HEAD is the allocation's first host (SLURM_JOB_NODELIST, expanded by `scontrol show hostnames`
when it is on PATH, else parsed here), PORT is $VIDIDI_RDZV_PORT (default 29500) and JOB_ID is
$SLURM_JOB_ID (so two runs never join each other's group). The torchrun on HEAD hosts the
rendezvous store; all N x G workers then form one process group (NCCL on GPUs, gloo on CPU) exactly
as a one-node torchrun does, so training, checkpoints (written by global rank 0 on a shared file
system) and resume (`StepBatches` depends only on seed, step, rank and world size) are unchanged.

Environment read: SLURM_NNODES (or SLURM_JOB_NUM_NODES), SLURM_JOB_NODELIST (or SLURM_NODELIST),
SLURM_JOB_ID, VIDIDI_RDZV_PORT; VIDIDI_RDZV_HOST overrides the head host (tests: two "nodes" on
localhost).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from typing import Mapping, Sequence

from vididi.utils import VididiError

DEFAULT_PORT = 29500


def first_host(nodelist: str) -> str:
    """The first host of a SLURM hostlist: "gpu[03-05,9],cpu1" -> "gpu03"; "a1,a2" -> "a1".

    Handles one bracket group per host name (SLURM's common form); several groups in one name
    ("r[1-2]n[1-4]") take the first value of each.
    """
    head = re.match(r"((?:[^,\[]|\[[^\]]*\])+)", nodelist.strip())
    if not head:
        raise VididiError(f"cannot read a host from SLURM node list {nodelist!r}")
    return re.sub(r"\[([^\]]*)\]", lambda m: re.split(r"[,-]", m.group(1))[0], head.group(1))


def head_host(env: Mapping[str, str]) -> str:
    """The rendezvous host: $VIDIDI_RDZV_HOST, else the first node of the SLURM allocation."""
    if env.get("VIDIDI_RDZV_HOST"):
        return env["VIDIDI_RDZV_HOST"]
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        raise VididiError("multi-node launch needs SLURM_JOB_NODELIST (run it through srun in a SLURM allocation)")
    if shutil.which("scontrol"):
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.split():
            return out.stdout.split()[0]
    return first_host(nodelist)


def torchrun_args(nproc_per_node: int, env: Mapping[str, str]) -> list[str]:
    """torchrun's options for this node of the SLURM allocation described by `env`."""
    nnodes = env.get("SLURM_NNODES") or env.get("SLURM_JOB_NUM_NODES")
    if not nnodes:
        raise VididiError("multi-node launch needs SLURM_NNODES (run it through srun in a SLURM allocation)")
    port = int(env.get("VIDIDI_RDZV_PORT", DEFAULT_PORT))
    return [
        "--nnodes", str(int(nnodes)),
        "--nproc_per_node", str(nproc_per_node),
        "--rdzv_backend", "c10d",
        "--rdzv_endpoint", f"{head_host(env)}:{port}",
        "--rdzv_id", env.get("SLURM_JOB_ID", "vididi"),
        "--max_restarts", "0",
    ]  # fmt: skip


def launcher_command(gpus: int, nodes: int, python: str = "python", stage: str = "pretrain") -> str:
    """The shell command the pretrain (or finetune) rule starts `vididi <stage>` with (its arguments
    follow); "" for one process (the caller's plain stage command). `python`: the stages' interpreter."""
    if nodes > 1:
        return (
            f"srun --nodes {nodes} --ntasks {nodes} --ntasks-per-node 1 --kill-on-bad-exit=1 "
            f"{python} -m vididi.launch --nproc-per-node {max(gpus, 1)} {stage}"
        )
    if gpus > 1:
        return f"{python} -m torch.distributed.run --standalone --nproc_per_node {gpus} -m vididi.cli {stage}"
    return ""


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vididi.launch", allow_abbrev=False, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--nproc-per-node", type=int, required=True, help="worker processes (GPUs) per node")
    parser.add_argument("stage", help="the vididi stage, e.g. pretrain")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the stage's arguments")
    ns = parser.parse_args(argv)
    cmd = [sys.executable, "-m", "torch.distributed.run", *torchrun_args(ns.nproc_per_node, os.environ),
           "-m", "vididi.cli", ns.stage, *ns.args]  # fmt: skip
    print(f"vididi.launch (node {os.environ.get('SLURM_NODEID', '?')}): {' '.join(cmd)}", file=sys.stderr, flush=True)
    os.execv(sys.executable, cmd)


if __name__ == "__main__":
    main()
