"""The plan of a run: every stage's command, environment, inputs and outputs, and the services.

A preset only chooses values; the stage list is the same at every scale. Stages of one seed: teacher
trajectories, SFT, two RL runs (from the SFT model and from the base model), three evaluations.
"""

from __future__ import annotations

from pathlib import Path

from search_r1.config import load_config
from search_r1.experiment.config import ExperimentConfig
from search_r1.experiment.stages import Stage, python
from search_r1.paths import CONFIG_DIR, INDEX_DIR, MODELS_DIR, WORLD_DIR
from search_r1.services import Service

RL_RUNS = {"sft_rl": ("rl_from_sft", "sft"), "rl": ("rl_from_base", "base")}  # group: (run name, start)


def _devices(gpus: list[int]) -> dict[str, str]:
    return {"CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus))} if gpus else {}


def _venv(venv: str) -> dict[str, str]:
    return {"SEARCH_R1_VENV": venv} if venv else {}


def _files(paths: list[str]) -> str:
    return "[" + ",".join(paths) + "]"


def sft_run_overrides(cfg: ExperimentConfig, seed: int, root: Path, teacher: bool) -> list[str]:
    """What the SFT stages of ``seed`` pass on top of the preset; only the trajectories stage talks
    to the teacher server (``train_sft.sh`` then finds every trajectory made and generates none)."""
    return [
        f"run_dir={root / 'sft'}",
        f"model={cfg.base_model}",
        "generate.retriever_url={retriever}",
        f"generate.seed={seed}",
        f"filters.seed={seed}",
        f"llamafactory.seed={seed}",
        *(["teacher.base_url={teacher}"] if teacher and cfg.teacher_server else []),
        *cfg.sft_overrides,
    ]


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
            "retriever.url={retriever}",
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


def write_agent_loops(path: Path, retriever_url: str) -> None:
    """verl reads the agent loop's retriever URL from a YAML file: one per run, with the live URL."""
    from omegaconf import OmegaConf

    loops = OmegaConf.load(CONFIG_DIR / "rl" / "verl" / "agent_loops.yaml")
    for entry in loops:
        entry.retriever_url = retriever_url
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(loops, path)


def _eval_stage(cfg: ExperimentConfig, name: str, model: str, out: Path, unseen: bool = False) -> Stage:
    """Evaluate ``model`` on the test files, or (``unseen``) on the unseen world with its retriever."""
    files, service = (
        ([str(cfg.unseen_dir / "test.parquet")], "unseen_retriever")
        if unseen
        else (cfg.test_files, "retriever")
    )
    overrides = [
        f"engine.model={model}", f"data={_files(files)}", f"retriever_url={{{service}}}",
        f"out_dir={out}", f"name={name.split('/')[-1]}", *cfg.eval_overrides,
    ]  # fmt: skip
    return Stage(
        name,
        [python(cfg.venv_rl), "-m", "search_r1.eval", "run", "--config", cfg.eval_config, *overrides],
        env=_venv(cfg.venv_rl) | _devices(cfg.train_gpus),
        inputs=[model, *files],
        outputs=[str(out / "results.json")],
        services=(service,),
        config=("eval", cfg.eval_config, overrides),
    )


def eval_stages(cfg: ExperimentConfig, prefix: str, group: str, model: str, root: Path) -> list[Stage]:
    """``group``'s evaluation on the test files and, with an unseen world, on it too."""
    stages = [_eval_stage(cfg, f"{prefix}{group}", model, root / group)]
    if cfg.unseen_world_seed is not None:
        stages.append(
            _eval_stage(cfg, f"{prefix}unseen/{group}", model, root / "unseen" / group, unseen=True)
        )
    return stages


def unseen_world_stages(cfg: ExperimentConfig) -> list[Stage]:
    """The held-out world and its index (both cached by their own builds, so they run every time)."""
    world, py = cfg.unseen_dir, python(cfg.venv_rl)
    share = cfg.unseen_test_fraction
    return [
        Stage(
            "unseen_world",
            [
                py, "-m", "search_r1.world.practice", f"seed={cfg.unseen_world_seed}", f"out_dir={world}",
                f"split_fractions=[0.0,{1.0 - share},{share}]",
            ],
            always=True,
            inputs=[str(WORLD_DIR / "kb.json")],
            outputs=[str(world / "test.parquet"), str(world / "corpus.jsonl")],
        ),
        Stage(
            "unseen_index",
            [py, "scripts/build_index.py", f"corpus={world / 'corpus.jsonl'}", f"out_dir={world / 'index'}"],
            always=True,
            inputs=[str(world / "corpus.jsonl")],
            outputs=[str(world / "index" / "manifest.json")],
        ),
    ]  # fmt: skip


def setup_stages(cfg: ExperimentConfig) -> list[Stage]:
    """Data, corpus and index: what every seed's stages read."""
    py = python(cfg.venv_rl)
    stages = []
    if cfg.embedded_world:  # world, tiny model, world index: cached by their own config keys
        stages.append(
            Stage(
                "world",
                [py, "-m", "search_r1.world"],
                always=True,
                outputs=[str(WORLD_DIR / f"{split}.parquet") for split in ("train", "test")]
                + [str(WORLD_DIR / "kb.json"), str(MODELS_DIR / "tiny-base")],
            )
        )
        stages.append(Stage("world_index", [py, "scripts/build_index.py", f"out_dir={INDEX_DIR / 'world'}"], always=True, outputs=[str(INDEX_DIR / "world" / "manifest.json")]))  # fmt: skip
    if cfg.world_mirror:
        mirror = Path(cfg.world_mirror)
        stages.append(
            Stage(
                "mirror",
                [py, "-m", "search_r1.world.mirror", f"out={mirror}"],
                inputs=[str(INDEX_DIR / "world" / "manifest.json")],
                outputs=[str(mirror / "wiki18" / "part_ab"), str(mirror / "flashrag")],
            )
        )
    if cfg.prepare_data is not None:
        from search_r1.data.builders import PrepareConfig, eval_split

        p = load_config(PrepareConfig, None, cfg.prepare_data)
        out = Path(p.out_dir)
        written = [str(out / n / f"{eval_split(n)}.parquet") for n in p.sources]
        written += [str(out / n / "train.parquet") for n in p.sources if n in p.train_sources]
        written += [str(out / "train.parquet")] if set(p.sources) & set(p.train_sources) else []
        inputs = [str(Path(p.raw_dir))] if not p.download else []
        stages.append(
            Stage("data", [py, "scripts/prepare_data.py", *cfg.prepare_data], inputs=inputs, outputs=written)
        )
    if cfg.wiki18 is not None:
        from search_r1.retrieval.download import DownloadConfig

        d = load_config(DownloadConfig, None, cfg.wiki18)
        inputs = [d.mirror] if d.mirror else []
        outputs = [str(Path(d.index_dir) / "manifest.json")]
        stages.append(
            Stage("wiki18", [py, "scripts/download_wiki18.py", *cfg.wiki18], inputs=inputs, outputs=outputs)
        )
    return stages


def seed_stages(cfg: ExperimentConfig, seed: int) -> tuple[list[Stage], list[Stage]]:
    """One seed's stages: (teacher trajectories, which need the teacher; everything after them)."""
    root = cfg.root / f"seed{seed}"
    from sft.config import SFTConfig

    sft_args, teacher_args = (
        sft_run_overrides(cfg, seed, root, False),
        sft_run_overrides(cfg, seed, root, True),
    )
    sft = load_config(SFTConfig, Path(cfg.sft_config), [a for a in sft_args if "{" not in a])
    merged = str(root / "sft" / "merged")
    teacher = Stage(
        f"seed{seed}/trajectories",
        [python(cfg.venv_sft), "-m", "sft.generate", "--config", cfg.sft_config, *teacher_args],
        env=_venv(cfg.venv_sft),
        inputs=[str(Path(sft.world_dir) / f"{sft.generate.split}.parquet"), sft.model],
        outputs=[str(sft.trajectories)],
        services=("retriever", "teacher") if cfg.teacher_server else ("retriever",),
        config=("sft", cfg.sft_config, teacher_args),
    )
    after = [
        Stage(
            f"seed{seed}/sft",
            ["bash", "train_sft.sh", "--config", cfg.sft_config, *sft_args],
            env=_venv(cfg.venv_sft)
            | _devices(cfg.train_gpus)
            | ({} if cfg.sft_check else {"SFT_SKIP_EVAL": "1"}),
            inputs=[str(sft.trajectories), sft.model],
            outputs=[merged + "/config.json"],
            services=("retriever",),
            config=("sft", cfg.sft_config, sft_args),
        )
    ]
    models = {"baseline": cfg.base_model, "sft": merged}
    for group, (name, start_from) in RL_RUNS.items():
        start = merged if start_from == "sft" else cfg.base_model
        after += rl_stages(cfg, seed, root, start, name)
        models[group] = str(root / "ppo" / name / "merged")
    for g in ("sft", "rl", "sft_rl"):
        after += eval_stages(cfg, f"seed{seed}/eval/", g, models[g], root / "eval")
    return [teacher], after


def rl_stages(cfg: ExperimentConfig, seed: int, root: Path, start: str, name: str) -> list[Stage]:
    """Train one RL run and leave a Hugging Face folder at ``<root>/ppo/<name>/merged``.

    verl: train_ppo.sh with verl, then export its FSDP checkpoint. Single machine: train_ppo.sh with
    the single-machine trainer, which writes the folder itself. With ``verl_rehearsal`` set, the
    single-machine run is framed by what a CPU can run of the verl path: verl validates this run's
    overrides and runs its agent loop (before), and the trained model is saved as a sharded verl
    FSDP checkpoint and exported by the same export stage as on GPUs (after)."""
    run = root / "ppo" / name
    env = _venv(cfg.venv_rl) | _devices(cfg.train_gpus)
    loops = root / "agent_loops.yaml"
    verl_ckpt = str(run / "latest_checkpointed_iteration.txt")
    export = Stage(
        f"seed{seed}/{name}_export",
        [python(cfg.venv_rl), "-m", "search_r1.rl.export", f"ckpt_dir={run}", f"out={run / 'merged'}"],
        env=_venv(cfg.venv_rl),
        inputs=[verl_ckpt],
        outputs=[str(run / "merged" / "config.json")],
    )
    if cfg.rl_backend == "verl":
        overrides = rl_run_overrides(cfg, seed, root, start, name, "verl", cfg.rl_overrides)
        train = Stage(
            f"seed{seed}/{name}",
            ["bash", "train_ppo.sh", "--config", cfg.rl_config, *overrides],
            env=env,
            inputs=[start],
            outputs=[verl_ckpt],
            services=("retriever",),
            before=lambda urls: write_agent_loops(loops, urls["retriever"]),
            config=("verl", cfg.rl_config, overrides),
        )
        return [train, export]
    trainer_dir = root / ("ppo_single" if cfg.verl_rehearsal else "ppo")
    overrides = rl_run_overrides(cfg, seed, root, start, name, "single", cfg.rl_overrides, trainer_dir)
    train = Stage(
        f"seed{seed}/{name}",
        ["bash", "train_ppo.sh", "--config", cfg.rl_config, *overrides],
        env=env,
        inputs=[start],
        outputs=[str(trainer_dir / name / "merged" / "config.json")],
        services=("retriever",),
        config=("single", cfg.rl_config, overrides),
    )
    if not cfg.verl_rehearsal:
        return [train]
    verl_args = rl_run_overrides(cfg, seed, root, start, name, "verl", cfg.verl_rehearsal_overrides)
    rehearse = Stage(
        f"seed{seed}/{name}_verl",
        [
            python(cfg.venv_rl), "-m", "search_r1.rl.verl_rehearsal", "--config", cfg.verl_rehearsal,
            *verl_args, *cfg.verl_rehearsal_args,
        ],
        env=env,
        inputs=[start],
        outputs=[str(run / "verl_rehearsal.json")],
        services=("retriever",),
        before=lambda urls: write_agent_loops(loops, urls["retriever"]),
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
        env=_venv(cfg.venv_rl),
        inputs=[str(trainer_dir / name / "merged")],
        outputs=[verl_ckpt],
    )
    return [rehearse, train, shard, export]


def _check_unseen(cfg: ExperimentConfig) -> None:
    """The unseen world must be one no stage trains on: not an SFT practice world."""
    from sft.config import SFTConfig

    if not cfg.embedded_world:
        raise ValueError("unseen_world_seed needs the embedded world (embedded_world=true)")
    if not 0 < cfg.unseen_test_fraction <= 1:
        raise ValueError(f"unseen_test_fraction must be in (0, 1], got {cfg.unseen_test_fraction}")
    overrides = [o for o in cfg.sft_overrides if "{" not in o]
    practice = load_config(SFTConfig, Path(cfg.sft_config), overrides).practice_seeds
    if cfg.unseen_world_seed in practice:
        raise ValueError(
            f"unseen_world_seed={cfg.unseen_world_seed} is one of the SFT practice worlds {practice}: "
            "the student is distilled on it, so it is not unseen"
        )


def plan(cfg: ExperimentConfig) -> list[Stage]:
    """Every stage in run order: set-up, baseline, all seeds' trajectories, then the rest per seed
    (so a teacher server on the trainers' GPUs is gone before the first SFT starts)."""
    if cfg.rl_backend not in ("single", "verl"):
        raise ValueError(f"rl_backend must be single | verl, got {cfg.rl_backend!r}")
    if cfg.unseen_world_seed is not None:
        _check_unseen(cfg)
    stages = setup_stages(cfg)
    stages += unseen_world_stages(cfg) if cfg.unseen_world_seed is not None else []
    stages += eval_stages(cfg, "", "baseline", cfg.base_model, cfg.root)
    per_seed = [seed_stages(cfg, s) for s in cfg.seeds]
    stages += [s for teacher, _ in per_seed for s in teacher] + [s for _, rest in per_seed for s in rest]
    for stage in stages:
        stage.env = cfg.env | stage.env
    return stages


def services(cfg: ExperimentConfig) -> dict[str, Service]:
    logs = cfg.root / "logs"
    server = [python(cfg.venv_rl), "-m", "search_r1.retrieval.server"]
    server += ["--config", cfg.retriever_config] if cfg.retriever_config else []
    out = {
        "retriever": Service(
            "retriever",
            [*server, f"index_dir={cfg.index_dir}", "port={port}", *cfg.retriever_args],
            health="http://127.0.0.1:{port}/health",
            url="http://127.0.0.1:{port}",
            env=cfg.env | _venv(cfg.venv_rl) | _devices(cfg.retriever_gpus),
            log=logs / "retriever.log",
        )
    }
    if cfg.unseen_world_seed is not None:
        out["unseen_retriever"] = Service(
            "unseen_retriever",
            [*server, f"index_dir={cfg.unseen_dir / 'index'}", "port={port}", *cfg.retriever_args],
            health="http://127.0.0.1:{port}/health",
            url="http://127.0.0.1:{port}",
            env=cfg.env | _venv(cfg.venv_rl) | _devices(cfg.retriever_gpus),
            log=logs / "unseen_retriever.log",
        )
    if cfg.teacher_server:
        out["teacher"] = Service(
            "teacher",
            [python(cfg.venv_rl) if c == "{python}" else c for c in cfg.teacher_server],
            health="http://127.0.0.1:{port}/v1/models",
            url="http://127.0.0.1:{port}/v1",
            env=cfg.env | _devices(cfg.train_gpus),
            log=logs / "teacher.log",
        )
    return out
