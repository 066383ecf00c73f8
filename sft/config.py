"""One typed config for the whole distillation stage; ``configs/sft/<preset>.yaml`` fills it.

Every ``sft`` entry point (generate, filter, export, train) reads the same file, so a preset is one
place to look. The ``llamafactory`` section is passed verbatim to LLaMA-Factory (its own argument
names), with the dataset, template and output paths filled in from ``run_dir``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search_r1.paths import CONFIG_DIR, MODELS_DIR, RUNS_DIR, WORLD_DIR

DEFAULT_CONFIG = CONFIG_DIR / "sft" / "tiny.yaml"


@dataclass
class TeacherConfig:
    kind: str = field(default="oracle", metadata={"help": "oracle (embedded world only) | openai"})
    p_search_known: float = field(
        default=0.5, metadata={"help": "oracle: probability of searching a fact the base model already knows"}
    )
    api: str = field(
        default="completions",
        metadata={
            "help": "openai: completions (/v1/completions: vLLM, SGLang, search_r1.agent.serve; the exact "
            "protocol) | chat (/v1/chat/completions: hosted APIs that offer chat only)"
        },
    )
    model: str = field(default="", metadata={"help": "openai: served model name"})
    base_url: str = field(
        default="http://127.0.0.1:8001/v1",
        metadata={"help": "openai: endpoint (vLLM/SGLang server or hosted API)"},
    )
    api_key_env: str = field(
        default="OPENAI_API_KEY", metadata={"help": "openai: env var holding the key (unset = no key)"}
    )
    max_retries: int = field(
        default=5,
        metadata={"help": "openai: retries of a 429, 5xx or connection error (exponential backoff)"},
    )
    timeout_s: float = field(default=120.0, metadata={"help": "openai: seconds per request"})


@dataclass
class GenerateConfig:
    split: str = field(default="train", metadata={"help": "which world split to generate for"})
    n_samples: int = field(default=2, metadata={"help": "trajectories per question"})
    temperature: float = field(default=1.0, metadata={"help": "teacher sampling temperature (0 = greedy)"})
    seed: int = field(default=0, metadata={"help": "base seed; sample k of a question uses seed + k"})
    max_questions: int = field(default=0, metadata={"help": "use only the first N questions (0 = all)"})
    batch_size: int = field(
        default=32, metadata={"help": "questions in flight; each batch is appended in order"}
    )
    retriever_url: str = field(default="http://127.0.0.1:8000", metadata={"help": "retriever service"})
    retriever_token: str | None = field(
        default=None,
        metadata={"help": "bearer token of the retriever service; null = env SEARCH_R1_RETRIEVER_TOKEN"},
    )
    protocol: str = field(
        default=str(CONFIG_DIR / "agent" / "tiny.yaml"), metadata={"help": "ProtocolConfig YAML (same as RL)"}
    )
    prompt_template: str = field(default="compact", metadata={"help": "search_r1.agent.prompt template"})


@dataclass
class PracticeConfig:
    worlds: int = field(
        default=0,
        metadata={
            "help": "practice worlds (search_r1.world.practice) whose teacher trajectories join the SFT set; "
            "embedded world only"
        },
    )
    seed: int = field(default=1, metadata={"help": "practice world k (from 0) is built with seed + k"})


@dataclass
class FilterConfig:
    require_correct: bool = field(
        default=True, metadata={"help": "final answer must exact-match a gold answer"}
    )
    require_format: bool = field(default=True, metadata={"help": "valid tag grammar (rewards.format)"})
    require_support: bool = field(
        default=True, metadata={"help": "every gold support doc was retrieved (when the question lists them)"}
    )
    max_searches: int = field(default=4, metadata={"help": "drop trajectories with more searches"})
    max_tokens: int = field(
        default=1024, metadata={"help": "drop trajectories longer than this (prompt+response)"}
    )
    drop_duplicate_queries: bool = field(
        default=True, metadata={"help": "drop a trajectory that repeats a query"}
    )
    fewest_searches: bool = field(
        default=True,
        metadata={"help": "keep one trajectory per question: the correct one with fewest searches"},
    )
    max_all_solved_fraction: float = field(
        default=1.0, metadata={"help": "cap on the share of questions every sample solved (1.0 = no cap)"}
    )
    mix: dict[str, float] = field(
        default_factory=dict,
        metadata={
            "help": "target share of no_search/one_search/multi_search, e.g. {no_search: 0.2}; {} = as is"
        },
    )
    seed: int = field(default=0, metadata={"help": "seed for the downsampling"})


@dataclass
class CheckConfig:
    """``train_sft.sh``'s closing before/after check (skipped with SFT_SKIP_EVAL=1; the experiment
    runner skips it, since its evaluation stages cover it)."""

    split: str = field(default="test", metadata={"help": "split of world_dir to check on"})
    max_questions: int = field(
        default=0, metadata={"help": "first N questions (0 = all; the 3B preset checks a sample)"}
    )
    device: str = field(
        default="auto", metadata={"help": "HF engine device: auto (GPU when there is one) | cpu"}
    )


@dataclass
class SFTConfig:
    preset: str = field(default="tiny", metadata={"help": "name of this run (the default run_dir uses it)"})
    model: str = field(
        default=str(MODELS_DIR / "tiny-base"), metadata={"help": "student base model (HF folder)"}
    )
    world_dir: str = field(default=str(WORLD_DIR), metadata={"help": "embedded world (questions, kb)"})
    run_dir: str = field(
        default="", metadata={"help": "outputs of this run ('' = outputs/runs/sft/<preset>)"}
    )
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    practice: PracticeConfig = field(default_factory=PracticeConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    check: CheckConfig = field(default_factory=CheckConfig)
    llamafactory: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "LLaMA-Factory training arguments (its own names)"}
    )
    merge: bool = field(default=True, metadata={"help": "merge the LoRA adapter into a full HF folder"})

    @property
    def root(self) -> Path:
        return Path(self.run_dir) if self.run_dir else RUNS_DIR / "sft" / self.preset

    trajectories = property(lambda self: self.root / "trajectories.jsonl")

    @property
    def practice_seeds(self) -> list[int]:
        return [self.practice.seed + k for k in range(self.practice.worlds)]

    def practice_trajectories(self, seed: int) -> Path:
        return self.root / "practice" / f"seed{seed}.jsonl"

    @property
    def trajectory_files(self) -> list[Path]:
        """Every file the filters read: the world's trajectories, then each practice world's."""
        return [self.trajectories] + [self.practice_trajectories(s) for s in self.practice_seeds]

    filtered = property(lambda self: self.root / "filtered.jsonl")
    filter_report = property(lambda self: self.root / "filter_report.json")
    dataset_dir = property(lambda self: self.root / "data")
    adapter_dir = property(lambda self: self.root / "lora")
    merged_dir = property(lambda self: self.root / "merged")
