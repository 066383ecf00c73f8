"""The experiment's typed config: one dataclass a preset (``configs/experiment/<preset>.yaml``) fills."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from search_r1.paths import CONFIG_DIR, INDEX_DIR, MODELS_DIR, RUNS_DIR, WORLD_DIR


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
    unseen_world_seed: int | None = field(
        default=None,
        metadata={
            "help": "embedded world only: also evaluate every group on a held-out counterfactual world "
            "(search_r1.world.practice with this seed) that no stage trains on, served by its own index; "
            "null = none. Must differ from the SFT practice worlds' seeds"
        },
    )
    unseen_test_fraction: float = field(
        default=1.0,
        metadata={"help": "share of the unseen world's subjects (drawn at random) in its test split"},
    )
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
    rl_world_seed: int | None = field(
        default=None,
        metadata={
            "help": "embedded world only: the RL runs train on this practice world's train split, served by "
            "its own index, instead of rl_config's train files (questions no earlier stage trained on); "
            "null = rl_config's data on the experiment's retriever"
        },
    )
    rl_select: list[str] | None = field(
        default=None,
        metadata={
            "help": "pass-rate pre-pass before each RL run (python -m search_r1.rl.select overrides): the "
            "questions its start model solves only sometimes become the run's train files; null = none"
        },
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
    def unseen_dir(self) -> Path:
        return WORLD_DIR / "unseen" / f"seed{self.unseen_world_seed}"

    @property
    def rl_world_dir(self) -> Path:
        return WORLD_DIR / "practice" / f"seed{self.rl_world_seed}"

    @property
    def train_gpus(self) -> list[int]:
        return [g for g in self.gpus if g not in self.retriever_gpus]
