"""A trained model saved as a verl FSDP actor checkpoint, on CPU: the CPU rehearsal's bridge to export.

    python -m search_r1.rl.verl_checkpoint run=<single-machine trainer run folder> out=<verl run folder>

On a GPU node verl's trainer leaves ``<default_local_dir>/global_step_<N>/actor`` (one shard file per
rank, ``fsdp_config.json``, ``huggingface/``) and the export stage (``search_r1.rl.export``, verl's
model merger) turns it into a Hugging Face folder. verl's trainer cannot run on a CPU, but its
checkpoint code can: this wraps the single-machine trainer's result (``<run>/merged``) in FSDP over a
gloo process group of ``world_size`` CPU processes and saves it with verl's own
``FSDPCheckpointManager`` at the trainer's last step, plus ``latest_checkpointed_iteration.txt`` as
verl writes it. The rehearsal then exports that, so the export stage runs on real sharded files.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from search_r1.config import die, entry_point, parse_config
from search_r1.services import free_port

STEP = re.compile(r"global_step_(\d+)")


@dataclass
class VerlCheckpointConfig:
    run: str = field(
        default="", metadata={"help": "single-machine trainer run folder (merged/, global_step_<N>/)"}
    )
    out: str = field(default="", metadata={"help": "verl run folder to write global_step_<N>/actor into"})
    world_size: int = field(default=2, metadata={"help": "CPU processes = FSDP shards"})


def last_step(run: Path) -> int:
    steps = [int(m.group(1)) for p in run.iterdir() if (m := STEP.fullmatch(p.name))]
    if not steps:
        raise FileNotFoundError(f"no global_step_<N> checkpoint in {run}")
    return max(steps)


def save_rank(rank: int, model_dir: str, actor_dir: str, step: int, world_size: int, port: int) -> None:
    """One rank: join the gloo group, wrap the model as verl's FSDP workers do, save its shard."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import ShardingStrategy
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from verl.utils.checkpoint.fsdp_checkpoint_manager import FSDPCheckpointManager

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        model = FSDP(
            AutoModelForCausalLM.from_pretrained(model_dir),
            device_id=torch.device("cpu"),
            sharding_strategy=ShardingStrategy.FULL_SHARD,
            device_mesh=init_device_mesh("cpu", (world_size,), mesh_dim_names=("fsdp",)),
        )
        manager = FSDPCheckpointManager(
            model=model,
            optimizer=torch.optim.AdamW(model.parameters()),
            processing_class=AutoTokenizer.from_pretrained(model_dir),
        )
        manager.save_checkpoint(actor_dir, global_step=step)
    finally:
        dist.destroy_process_group()


def save_verl_checkpoint(model_dir: Path, out: Path, step: int, world_size: int = 2) -> Path:
    """Write ``out/global_step_<step>/actor`` from the HF folder ``model_dir``; returns the actor folder."""
    import torch.multiprocessing as mp

    actor = out / f"global_step_{step}" / "actor"
    args = (str(model_dir), str(actor), step, world_size, free_port())
    mp.spawn(save_rank, args=args, nprocs=world_size)
    (out / "latest_checkpointed_iteration.txt").write_text(str(step))
    return actor


@entry_point
def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(VerlCheckpointConfig, __doc__.splitlines()[0], None, argv)
    run = Path(cfg.run)
    if not (run / "merged" / "config.json").is_file():
        die(f"no trained model at {run / 'merged'} (run the single-machine trainer first)", 2)
    try:
        step = last_step(run)
    except FileNotFoundError as exc:
        die(str(exc), 2)
    actor = save_verl_checkpoint(run / "merged", Path(cfg.out), step, cfg.world_size)
    print(f"[verl_checkpoint] {cfg.world_size} FSDP shards of {run / 'merged'} -> {actor}")


if __name__ == "__main__":
    main()
