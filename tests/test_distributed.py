"""Distributed training on 2 CPU processes (gloo), started by the test with torchrun: DDP through
`transformers.Trainer` / accelerate and FSDP2 (`fully_shard`) give the scores of 1 process with the same global
batch, and the adapter saves (and DDP's atomic checkpoint) are complete. Commands as in docs/distributed.md."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from . import distributed_worker as worker

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(worker.__file__)

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> Path:
    """Runs `torchrun --standalone --nproc_per_node 2 tests/distributed_worker.py OUT ddp,fsdp2` once (a free port)."""
    out = tmp_path_factory.mktemp("two_processes")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER),
               str(out), "ddp,fsdp2"]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def scores(folder: Path) -> dict:
    return load_file(folder / "adapter" / "adapter_model.safetensors")


def assert_same_scores(distributed: dict, single: dict) -> None:
    initial = {key.replace(".default", ""): value for key, value in worker.make_model().state_dict().items()}
    assert distributed.keys() == single.keys() and len(single) == 14  # 7 projections x 2 layers
    for key in single:
        # Adam moves every score by ~lr per step, so gradients that were not averaged across processes would
        # show up as differences of ~0.1; float reduction order gives ~1e-6.
        torch.testing.assert_close(distributed[key], single[key], rtol=0, atol=1e-4)
    assert all((single[key] - initial[key]).abs().max() > 0.05 for key in single)  # it trained


def test_ddp_two_processes_match_one_process_with_the_same_global_batch(two_processes, tmp_path):
    worker.train_with_trainer(str(tmp_path), world_size=1)
    assert_same_scores(scores(two_processes / "ddp"), scores(tmp_path))
    checkpoint = two_processes / "ddp" / f"checkpoint-{worker.STEPS}"
    assert {"adapter_model.safetensors", "optimizer.pt", "trainer_state.json", "rng_state_0.pth",
            "rng_state_1.pth"} <= {p.name for p in checkpoint.iterdir()}  # fmt: skip
    assert sorted(p.name for p in (two_processes / "ddp").iterdir()) == ["adapter", checkpoint.name]  # none hidden


def test_fsdp2_two_processes_match_one_process_with_the_same_global_batch(two_processes, tmp_path):
    worker.train_fsdp2(str(tmp_path))
    assert_same_scores(scores(two_processes / "fsdp2"), scores(tmp_path))
