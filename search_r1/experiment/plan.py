"""The plan of a run: every stage's command, environment, inputs and outputs, and the services.

A preset only chooses values; the stage list is the same at every scale. Stages of one seed: teacher
trajectories, SFT, two RL runs (from the SFT model and from the base model, each after an optional
pass-rate pre-pass: ``rl_plan``), three evaluations, and three more on an unseen world (``worlds``).
"""

from __future__ import annotations

from pathlib import Path

from search_r1.config import load_config
from search_r1.experiment.config import ExperimentConfig
from search_r1.experiment.rl_plan import RL_RUNS, rl_stages
from search_r1.experiment.stages import Stage, gpu_env, python, venv_env
from search_r1.experiment.worlds import PRACTICE_SPLITS, check_worlds, practice_world_stages
from search_r1.paths import INDEX_DIR, MODELS_DIR, WORLD_DIR
from search_r1.services import Service


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
        env=venv_env(cfg.venv_rl) | gpu_env(cfg.train_gpus),
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
        env=venv_env(cfg.venv_sft),
        inputs=[str(Path(sft.world_dir) / f"{sft.generate.split}.parquet"), sft.model],
        outputs=[str(sft.trajectories)],
        services=("retriever", "teacher") if cfg.teacher_server else ("retriever",),
        config=("sft", cfg.sft_config, teacher_args),
    )
    after = [
        Stage(
            f"seed{seed}/sft",
            ["bash", "train_sft.sh", "--config", cfg.sft_config, *sft_args],
            env=venv_env(cfg.venv_sft)
            | gpu_env(cfg.train_gpus)
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


def plan(cfg: ExperimentConfig) -> list[Stage]:
    """Every stage in run order: set-up, baseline, all seeds' trajectories, then the rest per seed
    (so a teacher server on the trainers' GPUs is gone before the first SFT starts)."""
    if cfg.rl_backend not in ("single", "verl"):
        raise ValueError(f"rl_backend must be single | verl, got {cfg.rl_backend!r}")
    if cfg.unseen_world_seed is not None or cfg.rl_world_seed is not None:
        check_worlds(cfg)
    stages = setup_stages(cfg)
    if cfg.unseen_world_seed is not None:
        share = cfg.unseen_test_fraction
        stages += practice_world_stages(
            cfg, "unseen_world", cfg.unseen_world_seed, cfg.unseen_dir, [0.0, 1 - share, share]
        )
    if cfg.rl_world_seed is not None:
        stages += practice_world_stages(cfg, "rl_world", cfg.rl_world_seed, cfg.rl_world_dir, PRACTICE_SPLITS)
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
            env=cfg.env | venv_env(cfg.venv_rl) | gpu_env(cfg.retriever_gpus),
            log=logs / "retriever.log",
        )
    }
    worlds = {"unseen_retriever": cfg.unseen_world_seed, "rl_retriever": cfg.rl_world_seed}
    for name, seed in worlds.items():  # a counterfactual world's own index, served like the world's
        if seed is None:
            continue
        world = cfg.unseen_dir if name == "unseen_retriever" else cfg.rl_world_dir
        out[name] = Service(
            name,
            [*server, f"index_dir={world / 'index'}", "port={port}", *cfg.retriever_args],
            health="http://127.0.0.1:{port}/health",
            url="http://127.0.0.1:{port}",
            env=cfg.env | venv_env(cfg.venv_rl) | gpu_env(cfg.retriever_gpus),
            log=logs / f"{name}.log",
        )
    if cfg.teacher_server:
        out["teacher"] = Service(
            "teacher",
            [python(cfg.venv_rl) if c == "{python}" else c for c in cfg.teacher_server],
            health="http://127.0.0.1:{port}/v1/models",
            url="http://127.0.0.1:{port}/v1",
            env=cfg.env | gpu_env(cfg.train_gpus),
            log=logs / "teacher.log",
        )
    return out
