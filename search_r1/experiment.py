"""The experiment: baseline, SFT only, RL only and SFT + RL, evaluated on one test split — at any scale.

    python -m search_r1.experiment                                            # tiny preset, embedded world
    python -m search_r1.experiment --config configs/experiment/qwen2.5-3b-nq.yaml dry_run=true
    python -m search_r1.experiment --config configs/experiment/rehearsal.yaml # the 3B plan on CPU

One runner for every preset: a preset only chooses the stages' inputs, configs, environments and
GPUs. Each stage is the user-facing entry point it stands for (``scripts/prepare_data.py``,
``scripts/download_wiki18.py``, ``python -m sft.generate``, ``train_sft.sh``, ``train_ppo.sh``,
``python -m search_r1.rl.export``, ``python -m search_r1.eval``), run as a subprocess in its own venv
(``venv_sft`` / ``venv_rl``: LLaMA-Factory and verl[vllm] do not share one on a GPU node) and on its
own GPUs: the retriever gets ``retriever_gpus`` and the trainers the rest. The retriever serves
every stage; a teacher server (``teacher_server``) runs only while teacher trajectories are made.
Both are stopped at the end, on failure, on Ctrl-C and on SIGTERM.

Each stage is skipped when it is done (``search_r1.stages``), so an interrupted run continues where
it stopped. ``dry_run=true`` prints every stage's command, environment, inputs and outputs and
checks what a machine without GPUs can: the configs compose (verl validates the exact overrides of
each verl stage), the inputs line up with earlier outputs, the GPU plan is consistent.

Outputs (``out_dir``): per seed ``seed<k>/{sft,ppo,eval}/``, ``stages/`` and ``logs/``, then
``results.md`` / ``results.json`` / ``results.png`` (mean ± std over seeds); ``publish=true`` copies
the table and chart to ``docs/results/<preset>.*``.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from search_r1.config import load_config, parse_config, to_dict
from search_r1.experiment_report import GROUPS, summarize, write_report
from search_r1.paths import CONFIG_DIR, FIXTURE_DIR, INDEX_DIR, MODELS_DIR, REPO_ROOT, RUNS_DIR, WORLD_DIR
from search_r1.services import Service, ServiceProcess
from search_r1.stages import Stage, StageError, describe, is_done, line_up, python, run_stage

RL_RUNS = {"sft_rl": ("rl_from_sft", "sft"), "rl": ("rl_from_base", "base")}  # group: (run name, start)


@dataclass
class ExperimentConfig:
    preset: str = field(
        default="tiny", metadata={"help": "name of the preset (run folder, docs/results name)"}
    )
    seeds: list[int] = field(
        default_factory=lambda: [0], metadata={"help": "SFT/RL seeds; the table reports mean ± std"}
    )
    base_model: str = field(
        default=str(MODELS_DIR / "tiny-base"),
        metadata={"help": "the student before SFT/RL (folder or hub id)"},
    )
    embedded_world: bool = field(
        default=True, metadata={"help": "build the embedded world, the tiny model and the world index first"}
    )
    world_mirror: str = field(
        default="", metadata={"help": "write the world in the hub's formats here first (rehearsal); '' = no"}
    )
    prepare_data: list[str] | None = field(
        default=None,
        metadata={
            "help": "scripts/prepare_data.py overrides (QA sets -> verl parquet); null = no data stage"
        },
    )
    wiki18: list[str] | None = field(
        default=None,
        metadata={
            "help": "scripts/download_wiki18.py overrides (corpus + prebuilt index); null = no such stage"
        },
    )
    test_files: list[str] = field(
        default_factory=lambda: [str(WORLD_DIR / "test.parquet")],
        metadata={"help": "verl parquet(s) to evaluate on"},
    )
    index_dir: str = field(default=str(INDEX_DIR / "world"), metadata={"help": "retrieval index to serve"})
    retriever_url: str = field(
        default="", metadata={"help": "use a running retriever instead of starting one ('' = start one)"}
    )
    retriever_config: str = field(
        default="", metadata={"help": "retrieval server --config ('' = its default)"}
    )
    retriever_args: list[str] = field(
        default_factory=list, metadata={"help": "extra key=value overrides for the retriever server"}
    )
    teacher_server: list[str] = field(
        default_factory=list,
        metadata={
            "help": "command serving the teacher (OpenAI-compatible; '{port}' and '{python}' = venv_rl's python are "
            "filled) while trajectories are made; its URL becomes teacher.base_url. [] = the SFT config's "
            "teacher as it is (oracle, hosted API)"
        },
    )
    sft_config: str = field(
        default=str(CONFIG_DIR / "sft" / "tiny.yaml"), metadata={"help": "train_sft.sh --config"}
    )
    sft_overrides: list[str] = field(
        default_factory=list, metadata={"help": "extra key=value for the SFT stages"}
    )
    sft_check: bool = field(
        default=False,
        metadata={"help": "also run train_sft.sh's own before/after check (its check.* settings)"},
    )
    rl_backend: str = field(default="single", metadata={"help": "single (search_r1.rl.trainer) | verl"})
    rl_config: str = field(
        default=str(CONFIG_DIR / "rl" / "tiny_ppo.yaml"), metadata={"help": "train_ppo.sh --config"}
    )
    rl_overrides: list[str] = field(
        default_factory=list, metadata={"help": "extra key=value for train_ppo.sh"}
    )
    verl_rehearsal: str = field(
        default="",
        metadata={
            "help": "single backend only: a verl preset whose exact run overrides are validated by verl and whose "
            "agent loop and reward run in verl's AgentLoopWorker (python -m search_r1.rl.verl_rehearsal)"
        },
    )
    verl_rehearsal_overrides: list[str] = field(
        default_factory=list,
        metadata={
            "help": "verl overrides the rehearsal adds to the runner's own (e.g. the GPU preset's rl_overrides)"
        },
    )
    verl_rehearsal_args: list[str] = field(
        default_factory=list,
        metadata={"help": "arguments of search_r1.rl.verl_rehearsal itself (rows, protocol)"},
    )
    eval_config: str = field(
        default=str(CONFIG_DIR / "eval" / "default.yaml"), metadata={"help": "eval --config"}
    )
    eval_overrides: list[str] = field(
        default_factory=list, metadata={"help": "extra key=value for the evaluation"}
    )
    gpus: list[int] = field(default_factory=list, metadata={"help": "the node's GPUs ([] = none: CPU)"})
    retriever_gpus: list[int] = field(
        default_factory=list, metadata={"help": "GPUs of the retriever alone; trainers get the others"}
    )
    env: dict[str, str] = field(
        default_factory=dict,
        metadata={"help": "environment of every stage and service, e.g. {HF_HUB_OFFLINE: '1'}"},
    )
    venv_sft: str = field(default="", metadata={"help": "venv of the SFT stages ('' = the runner's)"})
    venv_rl: str = field(
        default="", metadata={"help": "venv of the RL, export and eval stages ('' = the runner's)"}
    )
    out_dir: str = field(default="", metadata={"help": "run folder ('' = outputs/runs/experiment/<preset>)"})
    resume: bool = field(default=True, metadata={"help": "skip stages that are done"})
    dry_run: bool = field(default=False, metadata={"help": "print and check the plan; run nothing"})
    publish: bool = field(
        default=False, metadata={"help": "copy the table and chart to docs/results/<preset>.*"}
    )

    @property
    def root(self) -> Path:
        return Path(self.out_dir or RUNS_DIR / "experiment" / self.preset)

    @property
    def train_gpus(self) -> list[int]:
        return [g for g in self.gpus if g not in self.retriever_gpus]


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


def _eval_stage(cfg: ExperimentConfig, name: str, model: str, out: Path) -> Stage:
    overrides = [
        f"engine.model={model}", f"data={_files(cfg.test_files)}", "retriever_url={retriever}",
        f"out_dir={out}", f"name={name.split('/')[-1]}", *cfg.eval_overrides,
    ]  # fmt: skip
    return Stage(
        name,
        [python(cfg.venv_rl), "-m", "search_r1.eval", "run", "--config", cfg.eval_config, *overrides],
        env=_venv(cfg.venv_rl) | _devices(cfg.train_gpus),
        inputs=[model, *cfg.test_files],
        outputs=[str(out / "results.json")],
        services=("retriever",),
        config=("eval", cfg.eval_config, overrides),
    )


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
                + [str(MODELS_DIR / "tiny-base")],
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
    after += [
        _eval_stage(cfg, f"seed{seed}/eval/{g}", models[g], root / "eval" / g)
        for g in ("sft", "rl", "sft_rl")
    ]
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


def plan(cfg: ExperimentConfig) -> list[Stage]:
    """Every stage in run order: set-up, baseline, all seeds' trajectories, then the rest per seed
    (so a teacher server on the trainers' GPUs is gone before the first SFT starts)."""
    if cfg.rl_backend not in ("single", "verl"):
        raise ValueError(f"rl_backend must be single | verl, got {cfg.rl_backend!r}")
    stages = setup_stages(cfg) + [_eval_stage(cfg, "baseline", cfg.base_model, cfg.root / "baseline")]
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


def check_plan(cfg: ExperimentConfig, stages: list[Stage]) -> tuple[list[str], list[str]]:
    """What a machine without GPUs can check of a plan: (problems, notes)."""
    problems, notes = line_up(stages), []
    if not set(cfg.retriever_gpus) <= set(cfg.gpus):
        problems.append(f"retriever_gpus {cfg.retriever_gpus} are not among gpus {cfg.gpus}")
    if cfg.gpus and not cfg.train_gpus:
        problems.append("every GPU is the retriever's: none left for the trainers")
    for venv in {cfg.venv_sft, cfg.venv_rl} - {""}:
        if not (Path(venv) / "bin" / "python").exists():
            notes.append(
                f"venv {venv} is not on this machine (docs/environments.md creates it on the GPU node)"
            )
    fake = {"retriever": "http://127.0.0.1:8000", "teacher": "http://127.0.0.1:8001/v1"}
    for stage in stages:
        if stage.config is None:
            continue
        kind, config, overrides = stage.config
        overrides = [o.format(**fake) if "{" in o else o for o in overrides]
        if kind == "verl":  # verl reads the model's config: a model a later stage makes gets a stand-in
            overrides, note = _stand_in_model(overrides)
            notes += [f"{stage.name}: {note}"] if note else []
        try:
            compose(kind, config, overrides)
        except Exception as exc:  # any composition failure is a finding of the dry run
            problems.append(f"{stage.name}: its {kind} config does not compose: {exc}")
    return problems, notes


def _stand_in_model(overrides: list[str]) -> tuple[list[str], str]:
    key = "actor_rollout_ref.model.path="
    path = next((o[len(key) :] for o in overrides if o.startswith(key)), "")
    if not path or (REPO_ROOT / path).exists():
        return overrides, ""
    stand_in = FIXTURE_DIR / "models" / "tiny-sft"
    note = f"verl validated with {stand_in} in place of {path} (not on this machine yet)"
    return [key + str(stand_in) if o.startswith(key) else o for o in overrides], note


def compose(kind: str, config: str, overrides: list[str]) -> None:
    """Build a stage's config as its entry point would; for verl, compose and validate it (verl's
    ``validate_config``), which is what ``train_ppo.sh`` runs before ``verl.trainer.main_ppo``."""
    if kind == "verl":
        from search_r1.rl.verl_config import check

        check(Path(config).stem, overrides)
        return
    if kind == "sft":
        from sft.config import SFTConfig as cls
    elif kind == "eval":
        from search_r1.eval.run import EvalConfig as cls
    else:
        from search_r1.rl.config import PPOConfig as cls
    load_config(cls, Path(config), overrides)


def run_experiment(cfg: ExperimentConfig) -> dict:
    start = time.time()
    root = cfg.root
    stages = plan(cfg)
    svc = services(cfg)
    if cfg.dry_run:
        problems, notes = check_plan(cfg, stages)
        print(describe(stages, root))
        for name, s in svc.items():
            env = " ".join(f"{k}={v}" for k, v in s.env.items())
            print(f"service {name} (up for: {', '.join(st.name for st in stages if name in st.services)}):")
            print(f"    $ {env} {shlex.join(s.cmd)}".replace("$  ", "$ "))
        print("".join(f"[dry-run] note: {n}\n" for n in notes), end="")
        print("".join(f"[dry-run] problem: {p}\n" for p in problems) or "[dry-run] ok: the plan checks out")
        return {"stages": [s.name for s in stages], "problems": problems, "notes": notes}
    problems = line_up(stages)
    if problems:
        raise RuntimeError("the plan's paths do not line up:\n  " + "\n  ".join(problems))
    root.mkdir(parents=True, exist_ok=True)
    resumed = cfg.resume and (root / "stages").exists()
    (root / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    last_use = {
        name: max(i for i, s in enumerate(stages) if name in s.services)
        for name in svc
        if any(name in s.services for s in stages)
    }
    urls: dict[str, str] = {}
    running: dict[str, ExitStack] = {}
    try:
        for i, stage in enumerate(stages):
            if cfg.resume and is_done(root, stage):
                print(f"[experiment] skip {stage.name}: done", flush=True)
            else:
                for name in stage.services:
                    if name not in urls:
                        running[name] = ExitStack()
                        given = cfg.retriever_url if name == "retriever" else ""
                        urls[name] = given or running[name].enter_context(ServiceProcess(svc[name]))
                run_stage(stage, root, urls)
            for name in [n for n, last in last_use.items() if last == i and n in running]:
                running.pop(name).close()  # e.g. the teacher's GPUs are free for SFT
                urls.pop(name)
    finally:
        for stack in running.values():
            stack.close()
    results = {g: [] for g in GROUPS}
    results["baseline"].append(root / "baseline" / "results.json")
    for seed in cfg.seeds:
        for group in ("sft", "rl", "sft_rl"):
            results[group].append(root / f"seed{seed}" / "eval" / group / "results.json")
    summary = summarize(results)
    summary["seconds"] = round(time.time() - start)
    summary["resumed"] = resumed
    write_report(summary, cfg, root, publish_dir=REPO_ROOT / "docs" / "results" if cfg.publish else None)
    return summary


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(
        ExperimentConfig, __doc__.splitlines()[0], CONFIG_DIR / "experiment" / "tiny.yaml", argv
    )
    try:
        summary = run_experiment(cfg)
    except KeyboardInterrupt:
        sys.exit("[experiment] interrupted; services were stopped. Run again to resume.")
    except (StageError, RuntimeError, ValueError) as exc:
        sys.exit(f"[experiment] {exc}")
    if cfg.dry_run and summary["problems"]:
        sys.exit(2)


if __name__ == "__main__":
    main()
