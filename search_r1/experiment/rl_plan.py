"""The RL stages of a seed: what each run trains on, the pre-pass, training and export, at any scale.

Two runs per seed (``RL_RUNS``): from the SFT model (SFT + RL) and from the base model (RL only). With
``rl_world_seed`` a run trains on a practice world's questions through that world's own retriever;
with ``rl_select`` a pass-rate pre-pass (``search_r1.rl.select``) first keeps the questions its start
model solves only sometimes.
"""

from __future__ import annotations

from pathlib import Path

from search_r1.config import load_config
from search_r1.experiment.config import ExperimentConfig
from search_r1.experiment.stages import Stage, gpu_env, python, venv_env
from search_r1.paths import CONFIG_DIR

RL_RUNS = {"sft_rl": ("rl_from_sft", "sft"), "rl": ("rl_from_base", "base")}  # group: (run name, start)


def rl_run_overrides(
    cfg: ExperimentConfig,
    seed: int,
    root: Path,
    start: str,
    name: str,
    backend: str,
    extra: list[str],
    trainer_dir: Path | None = None,
) -> list[str]:
    """The overrides of one RL run, for the single-machine trainer or for verl (``backend``), then
    ``extra``. The verl rehearsal on CPU calls this with the same arguments as a verl run on GPUs."""
    if backend == "single":
        return [
            f"actor_rollout_ref.model.path={start}",
            f"retriever.url={{{rl_service(cfg)}}}",
            f"trainer.default_local_dir={trainer_dir or root / 'ppo'}",
            f"trainer.experiment_name={name}",
            f"trainer.seed={seed}",
            f"data.seed={seed}",
            "trainer.resume_mode=auto",
            *extra,
        ]
    gpus = [f"trainer.n_gpus_per_node={len(cfg.train_gpus)}"] if cfg.train_gpus else []
    return [
        f"actor_rollout_ref.model.path={start}",
        f"actor_rollout_ref.rollout.agent.agent_loop_config_path={root / 'agent_loops.yaml'}",
        f"trainer.default_local_dir={root / 'ppo' / name}",
        f"trainer.experiment_name={cfg.preset}-{name}-seed{seed}",
        f"data.seed={seed}",
        "trainer.resume_mode=auto",
        *gpus,
        *extra,
    ]


def rl_service(cfg: ExperimentConfig) -> str:
    """The retriever the RL runs search: the RL world's own, or the experiment's."""
    return "rl_retriever" if cfg.rl_world_seed is not None else "retriever"


def rl_data(
    cfg: ExperimentConfig, seed: int, run: Path, start: str, name: str
) -> tuple[list[Stage], list[str]]:
    """What an RL run trains on: (the pass-rate pre-pass stage, if any; its data overrides)."""
    if cfg.rl_world_seed is None and cfg.rl_select is None:
        return [], []
    service = rl_service(cfg)
    files = str(cfg.rl_world_dir / "train.parquet") if cfg.rl_world_seed is not None else ""
    if cfg.rl_select is None:
        return [], [f"data.train_files={files}"]
    if not files:
        from search_r1.rl.config import PPOConfig

        files = load_config(PPOConfig, Path(cfg.rl_config), []).data.train_files
    selected = run / "select.parquet"
    args = [f"model={start}", f"train_files={files}", f"out={selected}", f"seed={seed}"]
    args += [f"retriever.url={{{service}}}", *cfg.rl_select]
    stage = Stage(
        f"seed{seed}/{name}_select",
        [python(cfg.venv_rl), "-m", "search_r1.rl.select", *args],
        env=venv_env(cfg.venv_rl) | gpu_env(cfg.train_gpus),
        inputs=[start, files],
        outputs=[str(selected)],
        services=(service,),
    )
    return [stage], [f"data.train_files={selected}"]


def write_agent_loops(path: Path, retriever_url: str) -> None:
    """verl reads the agent loop's retriever URL from a YAML file: one per run, with the live URL."""
    from omegaconf import OmegaConf

    loops = OmegaConf.load(CONFIG_DIR / "rl" / "verl" / "agent_loops.yaml")
    for entry in loops:
        entry.retriever_url = retriever_url
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(loops, path)


def rl_stages(cfg: ExperimentConfig, seed: int, root: Path, start: str, name: str) -> list[Stage]:
    """Train one RL run and leave a Hugging Face folder at ``<root>/ppo/<name>/merged``.

    verl: train_ppo.sh with verl, then export its FSDP checkpoint. Single machine: train_ppo.sh with
    the single-machine trainer, which writes the folder itself. With ``verl_rehearsal`` set, the
    single-machine run is framed by what a CPU can run of the verl path: verl validates this run's
    overrides and runs its agent loop (before), and the trained model is saved as a sharded verl
    FSDP checkpoint and exported by the same export stage as on GPUs (after)."""
    run = root / "ppo" / name
    env = venv_env(cfg.venv_rl) | gpu_env(cfg.train_gpus)
    loops = root / "agent_loops.yaml"
    service = rl_service(cfg)
    pre, data = rl_data(cfg, seed, run, start, name)
    verl_ckpt = str(run / "latest_checkpointed_iteration.txt")
    export = Stage(
        f"seed{seed}/{name}_export",
        [python(cfg.venv_rl), "-m", "search_r1.rl.export", f"ckpt_dir={run}", f"out={run / 'merged'}"],
        env=venv_env(cfg.venv_rl),
        inputs=[verl_ckpt],
        outputs=[str(run / "merged" / "config.json")],
    )
    if cfg.rl_backend == "verl":
        overrides = rl_run_overrides(cfg, seed, root, start, name, "verl", [*data, *cfg.rl_overrides])
        train = Stage(
            f"seed{seed}/{name}",
            ["bash", "train_ppo.sh", "--config", cfg.rl_config, *overrides],
            env=env,
            inputs=[start],
            outputs=[verl_ckpt],
            services=(service,),
            before=lambda urls: write_agent_loops(loops, urls[service]),
            config=("verl", cfg.rl_config, overrides),
        )
        return [*pre, train, export]
    trainer_dir = root / ("ppo_single" if cfg.verl_rehearsal else "ppo")
    extra = [*data, *cfg.rl_overrides]
    overrides = rl_run_overrides(cfg, seed, root, start, name, "single", extra, trainer_dir)
    train = Stage(
        f"seed{seed}/{name}",
        ["bash", "train_ppo.sh", "--config", cfg.rl_config, *overrides],
        env=env,
        inputs=[start],
        outputs=[str(trainer_dir / name / "merged" / "config.json")],
        services=(service,),
        config=("single", cfg.rl_config, overrides),
    )
    if not cfg.verl_rehearsal:
        return [*pre, train]
    verl_args = rl_run_overrides(cfg, seed, root, start, name, "verl", [*data, *cfg.verl_rehearsal_overrides])
    rehearse = Stage(
        f"seed{seed}/{name}_verl",
        [
            python(cfg.venv_rl), "-m", "search_r1.rl.verl_rehearsal", "--config", cfg.verl_rehearsal,
            *verl_args, *cfg.verl_rehearsal_args,
        ],
        env=env,
        inputs=[start],
        outputs=[str(run / "verl_rehearsal.json")],
        services=(service,),
        before=lambda urls: write_agent_loops(loops, urls[service]),
        config=("verl", cfg.verl_rehearsal, verl_args),
    )  # fmt: skip
    shard = Stage(
        f"seed{seed}/{name}_verl_checkpoint",
        [
            python(cfg.venv_rl),
            "-m",
            "search_r1.rl.verl_checkpoint",
            f"run={trainer_dir / name}",
            f"out={run}",
        ],
        env=venv_env(cfg.venv_rl),
        inputs=[str(trainer_dir / name / "merged")],
        outputs=[verl_ckpt],
    )
    return [*pre, rehearse, train, shard, export]
