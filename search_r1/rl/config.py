"""The single-machine trainer's typed config. Sections and key names follow verl's
``ppo_trainer.yaml`` where the concept is the same (``actor_rollout_ref.actor.clip_ratio``,
``algorithm.adv_estimator``, ``trainer.save_freq`` ...), so a setting reads the same in both trainers.
Presets live in ``configs/rl/*.yaml``; ``python -m search_r1.rl.trainer --help`` lists every field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from search_r1.paths import CONFIG_DIR, INDEX_DIR, MODELS_DIR, RUNS_DIR, WORLD_DIR


def _f(default: Any, help: str) -> Any:  # noqa: A002 - "help" mirrors argparse
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class DataConfig:
    train_files: str = _f(str(WORLD_DIR / "train.parquet"), "verl-schema parquet of training questions")
    train_max_samples: int = _f(
        -1,
        "train on N questions of train_files, as verl: a random subset by seed (the first N without shuffle); -1 = all",
    )
    train_batch_size: int = _f(8, "prompts per step (each sampled actor_rollout_ref.rollout.n times)")
    shuffle: bool = _f(True, "reshuffle the prompts every epoch (order is a pure function of seed and step)")
    seed: int = _f(1, "seed of the data order")


@dataclass
class ModelConfig:
    path: str = _f(
        str(MODELS_DIR / "tiny-base"), "HF folder of the starting policy (the SFT merged checkpoint)"
    )
    lora_rank: int = _f(0, "LoRA rank; 0 = full fine-tuning (then the reference is a frozen copy)")
    lora_alpha: int = _f(16, "LoRA alpha")
    target_modules: str = _f("all-linear", "LoRA target modules (peft syntax)")


@dataclass
class OptimConfig:
    lr: float = _f(1e-5, "AdamW learning rate")
    weight_decay: float = _f(0.0, "AdamW weight decay")


@dataclass
class PolicyLossConfig:
    loss_mode: str = _f("vanilla", "verl policy-loss registry name (core_algos.register_policy_loss)")


@dataclass
class ActorConfig:
    optim: OptimConfig = field(default_factory=OptimConfig)
    ppo_mini_batch_size: int = _f(4, "prompts per optimizer step (x rollout.n sequences)")
    ppo_micro_batch_size_per_gpu: int = _f(8, "sequences per forward/backward (gradient accumulation)")
    ppo_epochs: int = _f(1, "passes over each rollout batch")
    clip_ratio: float = _f(0.2, "PPO clip range")
    clip_ratio_c: float = _f(3.0, "dual-clip lower bound for negative advantages")
    grad_clip: float = _f(1.0, "max gradient norm")
    entropy_coeff: float = _f(0.0, "entropy bonus coefficient")
    use_kl_loss: bool = _f(True, "add a KL-to-reference term to the actor loss (Search-R1's default)")
    kl_loss_coef: float = _f(0.001, "coefficient of the KL loss")
    kl_loss_type: str = _f("low_var_kl", "KL estimator: kl | abs | mse | low_var_kl (core_algos.kl_penalty)")
    loss_agg_mode: str = _f("token-mean", "token-mean | seq-mean-token-sum | seq-mean-token-mean")
    policy_loss: PolicyLossConfig = field(default_factory=PolicyLossConfig)


@dataclass
class RolloutConfig:
    n: int = _f(4, "samples per prompt (GRPO groups them by the prompt's uid)")
    temperature: float = _f(1.0, "sampling temperature")
    top_p: float = _f(1.0, "nucleus sampling")
    top_k: int = _f(0, "top-k sampling; 0 = off")
    max_batch_size: int = _f(64, "most sequences in one generate() call of the HF engine")


@dataclass
class ActorRolloutRefConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)


@dataclass
class CriticOptimConfig(OptimConfig):
    lr: float = _f(1e-4, "AdamW learning rate of the critic")


@dataclass
class CriticConfig:
    optim: CriticOptimConfig = field(default_factory=CriticOptimConfig)
    cliprange_value: float = _f(0.5, "value clip range")
    grad_clip: float = _f(1.0, "max gradient norm")
    ppo_micro_batch_size_per_gpu: int = _f(8, "sequences per critic forward/backward")


@dataclass
class KLCtrlConfig:
    kl_coef: float = _f(0.001, "coefficient of the in-reward KL penalty (fixed controller)")


@dataclass
class FilterGroupsConfig:
    """Dynamic sampling (DAPO): verl's ``algorithm.filter_groups``, same keys and meaning
    (search_r1.rl.dynamic_sampling; docs/rl.md "Dynamic sampling")."""

    enable: bool = _f(
        False,
        "drop the groups whose metric is the same for all rollout.n samples and roll out more questions until "
        "data.train_batch_size groups vary",
    )
    metric: str = _f(
        "reward",
        "per-sample value whose spread decides: reward (= score, what the advantage uses) or a key of "
        "compute_score's result: em (DAPO's acc), cover_em, f1, rouge_l, has_answer, format_valid",
    )
    max_num_gen_batches: int = _f(
        0,
        "most generation batches per step; still short then, the run stops with an error (as verl's DAPO); "
        "<= 0 = no limit (a step still draws each question at most once)",
    )

    def __post_init__(self) -> None:  # a bad metric is a config error (exit 2), not a failed run
        from search_r1.rl.dynamic_sampling import check_metric

        check_metric(self.metric)


@dataclass
class AlgorithmConfig:
    adv_estimator: str = _f(
        "gae", "verl advantage-estimator registry name: gae (PPO + critic), grpo, rloo, ..."
    )
    gamma: float = _f(1.0, "discount")
    lam: float = _f(1.0, "GAE lambda")
    norm_adv_by_std_in_grpo: bool = _f(True, "GRPO: divide by the group std (False = Dr.GRPO)")
    use_kl_in_reward: bool = _f(False, "subtract kl_ctrl.kl_coef * KL from the token rewards")
    kl_penalty: str = _f("kl", "KL estimator for the in-reward penalty")
    kl_ctrl: KLCtrlConfig = field(default_factory=KLCtrlConfig)
    filter_groups: FilterGroupsConfig = field(default_factory=FilterGroupsConfig)


@dataclass
class RetrieverConfig:
    url: str | None = _f(None, "retriever server URL; null = serve index_dir in-process on a free port")
    index_dir: str = _f(str(INDEX_DIR / "world"), "index to serve in-process when url is null")
    backend: str = _f("dense", "in-process backend: dense | bm25 | hybrid (as the SFT data's retriever)")
    timeout_s: float = _f(10.0, "per-request timeout of the client")
    token: str | None = _f(
        None,
        "bearer token of the server (also required by the in-process one); null = env SEARCH_R1_RETRIEVER_TOKEN",
    )


@dataclass
class AgentConfig:
    protocol: str = _f(str(CONFIG_DIR / "agent" / "tiny.yaml"), "protocol preset (search_r1.agent.protocol)")


@dataclass
class RewardConfig:
    reward_kwargs: dict[str, Any] = _f({"reward": "em"}, "kwargs of search_r1.rewards.compute_score")


@dataclass
class HealthConfig:
    """Collapse detection (search_r1.rl.health): each measure's current value against its early one."""

    early_steps: int = _f(
        5, "steps whose mean is a measure's early value; nothing is judged before they have run"
    )
    recent_steps: int = _f(
        3,
        "steps whose mean is a measure's current value (only steps after the early ones), so one batch cannot fire",
    )
    searches_fraction: float = _f(
        0.25, "collapse when searches per question fall below this fraction of their early value; 0 = off"
    )
    entropy_fraction: float = _f(
        0.2, "collapse when the actor's entropy falls below this fraction of its early value; 0 = off"
    )
    format_valid_fraction: float = _f(
        0.5,
        "collapse when the share of well-formed responses falls below this fraction of its early value; 0 = off",
    )
    format_valid_floor: float = _f(
        0.0, "collapse when the share of well-formed responses falls below this level; 0 = off"
    )


@dataclass
class TrainerConfig:
    total_training_steps: int = _f(20, "optimizer steps to run (one rollout batch each)")
    save_freq: int = _f(10, "checkpoint every N steps (and at the end); -1 = only at the end")
    project_name: str = _f("search_r1", "wandb project")
    experiment_name: str = _f("tiny_ppo", "wandb run name and run folder name")
    logger: list[str] = _f(["console"], "any of console, wandb")
    default_local_dir: str = _f(str(RUNS_DIR / "ppo"), "run folders go to <this>/<experiment_name>")
    resume_mode: str = _f("disable", "disable | auto (resume from the latest checkpoint; --resume sets it)")
    device: str = _f("auto", "auto | cpu | cuda")
    seed: int = _f(1, "seed of sampling and initialisation")
    save_merged: bool = _f(True, "write <run>/merged (HF folder, LoRA merged) at the end, for eval.sh")
    stop_on_collapse: bool = _f(
        False,
        "end the run (checkpoint, merged model, summary) at the first collapse the health section detects",
    )


@dataclass
class PPOConfig:
    data: DataConfig = field(default_factory=DataConfig)
    actor_rollout_ref: ActorRolloutRefConfig = field(default_factory=ActorRolloutRefConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    retriever: RetrieverConfig = field(default_factory=RetrieverConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
