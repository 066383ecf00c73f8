"""Single-machine PPO / GRPO for the search agent (CPU or one GPU), CleanRL-style: one file, top to bottom.

Each step: sample ``data.train_batch_size`` prompts (order = f(seed, step), so resume is exact) →
roll out ``rollout.n`` episodes each with *our* agent rollout (HF engine over the live actor, the
retriever over HTTP) → score them with *our* ``compute_score`` (with ``algorithm.filter_groups``, drop
the groups whose samples all score the same and roll out more prompts: ``search_r1.rl.dynamic_sampling``)
→ old/reference log-probs and values → advantages with verl's estimator registry (GAE with the
critic, GRPO, ...) → ``ppo_epochs`` of mini-batch updates with verl's policy loss, value loss and KL
(gradient accumulation over micro batches, grad clipping) → metrics and the collapse check
(``search_r1.rl.health``) → checkpoint every ``trainer.save_freq`` steps (and at a collapse with
``trainer.stop_on_collapse``, which ends the run).

Observation tokens have ``response_mask == 0``: every loss aggregates with that mask, so they get
zero weight. With LoRA the reference policy is the actor with its adapter disabled.

    python -m search_r1.rl.trainer --config configs/rl/tiny_ppo.yaml trainer.total_training_steps=5
    python -m search_r1.rl.trainer --config configs/rl/tiny_ppo.yaml --resume
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer
from verl.trainer.ppo import core_algos
from verl.utils.torch_functional import entropy_from_logits, logprobs_from_logits, masked_mean

from search_r1.agent.engines.base import SamplingParams
from search_r1.agent.engines.hf import HFEngine
from search_r1.agent.protocol import ProtocolConfig
from search_r1.agent.rollout import Retriever, rollout
from search_r1.config import build_parser, config_error, entry_point, load_config, to_dict
from search_r1.data.schema import read_parquet, uid_of
from search_r1.paths import CONFIG_DIR
from search_r1.retrieval.client import RetrieverAuthError
from search_r1.rewards import compute_score
from search_r1.rl.algos import compute_advantages, policy_loss_config
from search_r1.rl.batch import Batch, collate, place_outcome_reward
from search_r1.rl.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from search_r1.rl.config import ActorConfig, DataConfig, PPOConfig
from search_r1.rl.dynamic_sampling import Generation, NotEnoughGroups, draw_step
from search_r1.rl.health import TRAINER_KEYS, HealthMonitor, stop_summary
from search_r1.rl.learning import read_metrics
from search_r1.rl.retriever import open_retriever


def batch_indices(step: int, n_rows: int, batch_size: int, seed: int, shuffle: bool) -> list[int]:
    """Row indices of step ``step`` (1-based): consecutive slices of per-epoch permutations."""
    start = (step - 1) * batch_size
    out = []
    for pos in range(start, start + batch_size):
        epoch, i = divmod(pos, n_rows)
        order = np.random.default_rng([seed, epoch]).permutation(n_rows) if shuffle else np.arange(n_rows)
        out.append(int(order[i]))
    return out


def train_rows(data: DataConfig) -> list[dict]:
    """The training questions: ``train_files``, or ``train_max_samples`` of them chosen as verl does."""
    rows = read_parquet(data.train_files)
    n = data.train_max_samples
    if not 0 < n < len(rows):
        return rows
    keep = np.random.default_rng(data.seed).choice(len(rows), n, replace=False) if data.shuffle else range(n)
    return [rows[i] for i in sorted(keep)]


def prompt_ids(tokenizer, rows: list[dict]) -> list[list[int]]:
    """Each row's chat prompt rendered with the model's own template, ready to generate from."""
    return [
        tokenizer.apply_chat_template(
            row["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        for row in rows
    ]


def score_rollout(tokenizer, rows: list[dict], trajectories: list, n: int, reward_kwargs: dict) -> list[dict]:
    """``compute_score`` (the function verl calls) on each decoded response; the trajectories are
    ``n`` consecutive samples per row, as the rollout returns them."""
    return [
        compute_score(
            row["data_source"],
            tokenizer.decode(traj.response_ids, skip_special_tokens=True),
            row["reward_model"]["ground_truth"],
            row["extra_info"],
            **reward_kwargs,
        )
        for row, traj in zip([r for r in rows for _ in range(n)], trajectories, strict=True)
    ]


def rollout_seed(seed: int, step: int, attempt: int) -> int:
    """Seed of the sampling noise of generation batch ``attempt`` of ``step``: 0 is the step's
    ordinary batch; dynamic sampling's refills (1, 2, ...) get seeds of a stream of their own."""
    if attempt == 0:
        return seed * 100_003 + step
    return int(np.random.SeedSequence([seed, step, attempt]).generate_state(1)[0])


def load_models(cfg: PPOConfig, device: torch.device, dtype: torch.dtype):
    """Actor (LoRA or full), reference (None with LoRA: the adapter is disabled instead), critic (GAE only)."""
    mcfg = cfg.actor_rollout_ref.model
    actor = AutoModelForCausalLM.from_pretrained(mcfg.path, dtype=dtype).to(device)
    ref = None
    if mcfg.lora_rank > 0:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=mcfg.lora_rank, lora_alpha=mcfg.lora_alpha, target_modules=mcfg.target_modules)
        actor = get_peft_model(actor, lora)
    elif _needs_ref(cfg):
        ref = AutoModelForCausalLM.from_pretrained(mcfg.path, dtype=dtype).to(device).requires_grad_(False)
    critic = None
    if cfg.algorithm.adv_estimator == "gae":
        critic = AutoModelForTokenClassification.from_pretrained(mcfg.path, num_labels=1, dtype=dtype).to(
            device
        )
        if mcfg.lora_rank > 0:
            from peft import LoraConfig, get_peft_model

            critic = get_peft_model(
                critic,
                LoraConfig(
                    r=mcfg.lora_rank,
                    lora_alpha=mcfg.lora_alpha,
                    target_modules=mcfg.target_modules,
                    modules_to_save=["score"],
                ),
            )
    for m in (actor, ref, critic):  # no dropout anywhere: rollout and training see the same policy
        if m is not None:
            m.eval()
    return actor, ref, critic


def _needs_ref(cfg: PPOConfig) -> bool:
    return cfg.actor_rollout_ref.actor.use_kl_loss or cfg.algorithm.use_kl_in_reward


def forward_logprobs(model, b: Batch, temperature: float, with_entropy: bool = False):
    """Per-response-token log-probs (B, R) of ``b.responses`` (and the entropy, when asked)."""
    logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids).logits
    logits = logits[:, b.prompt_len - 1 : -1].float() / temperature
    logp = logprobs_from_logits(logits, b.responses)
    return (logp, entropy_from_logits(logits)) if with_entropy else (logp, None)


def forward_values(critic, b: Batch) -> torch.Tensor:
    """Value of the state before each response token (B, R), verl's convention."""
    out = critic(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids).logits
    return out[:, b.prompt_len - 1 : -1, 0].float()


@torch.no_grad()
def batched(fn, b: Batch, size: int) -> torch.Tensor:
    return torch.cat(
        [fn(b.select(range(i, min(i + size, len(b.uids))))) for i in range(0, len(b.uids), size)]
    )


def ref_logprobs(actor, ref, b: Batch, temperature: float) -> torch.Tensor:
    if ref is not None:
        return forward_logprobs(ref, b, temperature)[0]
    with actor.disable_adapter():  # LoRA: the reference is the base model under the adapter
        return forward_logprobs(actor, b, temperature)[0]


def train(cfg: PPOConfig, retriever: Retriever | None = None) -> Path:
    """Run (or resume) training; returns the run folder (metrics.jsonl, checkpoints, merged model)."""
    a, r, algo, t = cfg.actor_rollout_ref.actor, cfg.actor_rollout_ref.rollout, cfg.algorithm, cfg.trainer
    run_dir = Path(t.default_local_dir) / t.experiment_name
    run_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(
        t.device if t.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    random.seed(t.seed), np.random.seed(t.seed), torch.manual_seed(t.seed)

    tokenizer = AutoTokenizer.from_pretrained(cfg.actor_rollout_ref.model.path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    actor, ref, critic = load_models(cfg, device, dtype)
    actor_opt = torch.optim.AdamW(
        [p for p in actor.parameters() if p.requires_grad], lr=a.optim.lr, weight_decay=a.optim.weight_decay
    )
    critic_opt = None
    if critic is not None:
        critic_opt = torch.optim.AdamW(
            [p for p in critic.parameters() if p.requires_grad],
            lr=cfg.critic.optim.lr,
            weight_decay=cfg.critic.optim.weight_decay,
        )
    rows = train_rows(cfg.data)
    prompts = prompt_ids(tokenizer, rows)
    protocol = ProtocolConfig.from_yaml(cfg.agent.protocol)
    pl_config = policy_loss_config(a)
    policy_loss_fn = core_algos.get_policy_loss_fn(a.policy_loss.loss_mode)
    engine = HFEngine(actor, tokenizer, max_batch_size=r.max_batch_size)

    start = 0
    if t.resume_mode == "auto" and (ckpt := latest_checkpoint(run_dir)) is not None:
        start = load_checkpoint(ckpt, actor, critic, actor_opt, critic_opt)
        print(f"[ppo] resumed from {ckpt} (step {start})", flush=True)
    elif t.resume_mode not in ("auto", "disable"):
        raise ValueError(f"trainer.resume_mode must be auto | disable, got {t.resume_mode!r}")
    log = Logger(cfg, run_dir, start)
    health = HealthMonitor(cfg.health, TRAINER_KEYS, history=read_metrics(run_dir))  # kept steps only
    sampling = SamplingParams(temperature=r.temperature, top_p=r.top_p, top_k=r.top_k)

    with asyncio.Runner() as runner, open_retriever(cfg.retriever, runner, retriever) as retr:

        def generate(idx: list[int], attempt: int, *, step: int, timing: dict[str, float]) -> Generation:
            """One generation batch: rows ``idx`` rolled out ``rollout.n`` times each, then scored with
            the same ``compute_score`` verl calls, on the decoded response only."""
            with timer(timing, "rollout"):
                torch.manual_seed(rollout_seed(t.seed, step, attempt))  # sampling noise = f(step, attempt)
                uids = [uid_of(rows[i]) for i in idx]
                out = runner.run(
                    rollout(
                        engine,
                        tokenizer,
                        retr,
                        [prompts[i] for i in idx],
                        protocol,
                        sampling,
                        uids=uids,
                        n=r.n,
                    )
                )
            with timer(timing, "reward"):
                scored = score_rollout(
                    tokenizer, [rows[i] for i in idx], out.trajectories, r.n, cfg.reward.reward_kwargs
                )
            return Generation(idx, out.trajectories, scored, out.stats)

        for step in range(start + 1, t.total_training_steps + 1):
            timing: dict[str, float] = {}
            # ---- 1-2. rollout (our agent loop over the live actor) and reward --------------------
            idx = batch_indices(step, len(rows), cfg.data.train_batch_size, cfg.data.seed, cfg.data.shuffle)
            generate_step = functools.partial(generate, step=step, timing=timing)
            ds_metrics = {}
            if algo.filter_groups.enable:  # dynamic sampling: only groups whose samples differ, refilled
                drawn = draw_step(algo.filter_groups, cfg.data, step, idx, len(rows), r.n, generate_step)
                gen, ds_metrics = drawn.trained(r.n), drawn.metrics(lambda i: uid_of(rows[i]))
            else:
                gen = generate_step(idx, 0)
            uids, trajs, scored = [uid_of(rows[i]) for i in gen.rows], gen.trajectories, gen.scored
            b = collate(trajs, pad_id).to(device)
            scores = torch.tensor([s["score"] for s in scored], dtype=torch.float32, device=device)
            # ---- 3. old / reference log-probs and values ----------------------------------------
            mb = a.ppo_micro_batch_size_per_gpu
            with timer(timing, "old_log_prob"):
                old_logp = batched(lambda x: forward_logprobs(actor, x, r.temperature)[0], b, mb)
                ref_logp = (
                    batched(lambda x: ref_logprobs(actor, ref, x, r.temperature), b, mb)
                    if _needs_ref(cfg)
                    else None
                )
                values = batched(lambda x: forward_values(critic, x), b, mb) if critic is not None else None
            # ---- 4. advantages (verl's estimators) ------------------------------------------------
            token_rewards = place_outcome_reward(scores, b.response_mask)
            kl_metrics = {}
            if algo.use_kl_in_reward:
                kl = core_algos.kl_penalty(old_logp, ref_logp, algo.kl_penalty) * b.response_mask
                token_rewards = token_rewards - algo.kl_ctrl.kl_coef * kl
                kl_metrics["actor/reward_kl_penalty"] = masked_mean(kl, b.response_mask).item()
            advantages, returns = compute_advantages(algo, token_rewards, b.response_mask, b.uids, values)
            # ---- 5. PPO epochs over mini-batches, gradient accumulation over micro-batches --------
            with timer(timing, "update"):
                upd = update(
                    cfg,
                    actor,
                    critic,
                    actor_opt,
                    critic_opt,
                    policy_loss_fn,
                    pl_config,
                    b,
                    old_logp,
                    ref_logp,
                    values,
                    advantages,
                    returns,
                )
            # ---- 6. metrics, checkpoint ------------------------------------------------------------
            st = gen.stats
            metrics = {
                "step": step,
                "data/uids": uids,
                "reward/mean": scores.mean().item(),
                "reward/samples": scores.tolist(),
                "reward/em": float(np.mean([s["em"] for s in scored])),
                "reward/f1": float(np.mean([s["f1"] for s in scored])),
                "rollout/searches_per_question": st.searches,
                "rollout/valid_action_ratio": st.valid_action_ratio,
                "rollout/answered": st.answered,
                "rollout/format_valid": float(np.mean([s["format_valid"] for s in scored])),
                "rollout/response_length": st.response_tokens,
                "rollout/policy_tokens": b.response_mask.sum(1).mean().item(),
                "rollout/retrieval_failures": st.retrieval_failures,
                **ds_metrics,
                **kl_metrics,
                **upd,
                **{f"timing_s/{k}": v for k, v in timing.items()},
            }
            collapses = health.check(metrics, step)  # warns; ends the run only with trainer.stop_on_collapse
            stop = t.stop_on_collapse and bool(collapses)
            if stop or step == t.total_training_steps or (t.save_freq > 0 and step % t.save_freq == 0):
                with timer(metrics, "timing_s/save"):
                    save_checkpoint(run_dir, step, actor, critic, actor_opt, critic_opt)
            log.log(metrics)
            if stop:
                print(stop_summary(collapses, step, t.total_training_steps), flush=True)
                break
    if t.save_merged:
        save_merged(actor, tokenizer, run_dir / "merged")
    log.close()
    return run_dir


def update(
    cfg: PPOConfig,
    actor,
    critic,
    actor_opt,
    critic_opt,
    policy_loss_fn,
    pl_config,
    b: Batch,
    old_logp,
    ref_logp,
    values,
    advantages,
    returns,
) -> dict[str, float]:
    a, r = cfg.actor_rollout_ref.actor, cfg.actor_rollout_ref.rollout
    mini = a.ppo_mini_batch_size * r.n
    micro = a.ppo_micro_batch_size_per_gpu
    stats: dict[str, list[float]] = {}
    for _ in range(a.ppo_epochs):
        perm = torch.randperm(len(b.uids))  # the global RNG was seeded for this step before its rollouts
        for m0 in range(0, len(perm), mini):
            mini_idx = perm[m0 : m0 + mini]
            actor_opt.zero_grad(set_to_none=True)
            if critic_opt is not None:
                critic_opt.zero_grad(set_to_none=True)
            for u0 in range(0, len(mini_idx), micro):
                idx = mini_idx[u0 : u0 + micro]
                x, mask, weight = b.select(idx), b.response_mask[idx], len(idx) / len(mini_idx)
                logp, entropy = forward_logprobs(actor, x, r.temperature, with_entropy=True)
                loss, metrics = actor_loss(
                    a,
                    policy_loss_fn,
                    pl_config,
                    logp,
                    entropy,
                    old_logp[idx],
                    ref_logp[idx] if ref_logp is not None else None,
                    advantages[idx],
                    mask,
                )
                (loss * weight).backward()
                for k, v in metrics.items():
                    _add(stats, k, v)
                if critic is not None:
                    vpreds = forward_values(critic, x)
                    vf_loss, vf_clipfrac = core_algos.compute_value_loss(
                        vpreds, returns[idx], values[idx], mask, cfg.critic.cliprange_value, a.loss_agg_mode
                    )
                    (vf_loss * weight).backward()
                    _add(stats, "critic/vf_loss", vf_loss.item())
                    _add(stats, "critic/vf_clipfrac", vf_clipfrac.item())
            gn = torch.nn.utils.clip_grad_norm_(
                [p for p in actor.parameters() if p.requires_grad], a.grad_clip
            )
            _add(stats, "actor/grad_norm", gn.item())
            actor_opt.step()
            if critic is not None:
                torch.nn.utils.clip_grad_norm_(
                    [p for p in critic.parameters() if p.requires_grad], cfg.critic.grad_clip
                )
                critic_opt.step()
    return {k: float(np.mean(v)) for k, v in stats.items()}


def actor_loss(
    a: ActorConfig,
    policy_loss_fn,
    pl_config,
    logp: torch.Tensor,
    entropy: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, float]]:
    """verl's policy loss - entropy bonus + KL-to-reference loss, each aggregated with ``mask``."""
    pg_loss, pg_metrics = policy_loss_fn(
        old_log_prob=old_logp,
        log_prob=logp,
        advantages=advantages,
        response_mask=mask,
        loss_agg_mode=a.loss_agg_mode,
        config=pl_config,
    )
    ent = core_algos.agg_loss(entropy, mask, a.loss_agg_mode)
    loss = pg_loss - a.entropy_coeff * ent
    metrics = {
        "actor/pg_loss": pg_loss.item(),
        "actor/entropy": ent.item(),
        "actor/pg_clipfrac": pg_metrics["actor/pg_clipfrac"],
        "actor/ppo_kl": pg_metrics["actor/ppo_kl"],
    }
    if a.use_kl_loss:
        kl = core_algos.agg_loss(core_algos.kl_penalty(logp, ref_logp, a.kl_loss_type), mask, a.loss_agg_mode)
        loss = loss + a.kl_loss_coef * kl
        metrics["actor/kl_loss"] = kl.item()
    return loss, metrics


def _add(stats: dict[str, list[float]], key: str, value: float) -> None:
    stats.setdefault(key, []).append(value)


@contextlib.contextmanager
def timer(timing: dict, key: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    timing[key] = timing.get(key, 0.0) + time.perf_counter() - t0  # summed over a step's generation batches


def save_merged(actor, tokenizer, out: Path) -> None:
    """An HF folder of the trained policy (LoRA merged), the handoff to ``eval.sh``."""
    model = actor.merge_and_unload() if hasattr(actor, "merge_and_unload") else actor
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


class Logger:
    """Per-step metrics to the console (one line), ``<run>/metrics.jsonl`` and wandb."""

    CONSOLE = (
        "reward/mean",
        "reward/em",
        "rollout/searches_per_question",
        "rollout/valid_action_ratio",
        "rollout/format_valid",
        "rollout/answered",
        "rollout/response_length",
        "actor/kl_loss",
        "actor/entropy",
        "actor/pg_clipfrac",
        "critic/vf_loss",
        "rollout/retrieval_failures",
        "dynamic_sampling/gen_batches",
    )

    def __init__(self, cfg: PPOConfig, run_dir: Path, start_step: int):
        path = run_dir / "metrics.jsonl"
        kept = []  # on resume keep the steps up to the checkpoint: steps logged after it are redone
        if start_step > 0 and path.exists():
            kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= start_step]
        self.file = path.open("w")
        self.file.writelines(line + "\n" for line in kept)
        self.file.flush()  # the health monitor replays the kept steps from the file
        self.wandb = None
        if "wandb" in cfg.trainer.logger:
            import wandb

            self.wandb = wandb.init(
                project=cfg.trainer.project_name,
                name=cfg.trainer.experiment_name,
                config=to_dict(cfg),
                dir=str(run_dir),
                resume="allow",
                id=_wandb_id(run_dir),
            )
        self.console = "console" in cfg.trainer.logger

    def log(self, metrics: dict) -> None:
        self.file.write(json.dumps(metrics) + "\n")
        self.file.flush()
        if self.console:
            shown = " ".join(
                f"{k.replace('reward/', 'reward_').split('/')[-1]}={metrics[k]:.3g}"
                for k in self.CONSOLE
                if k in metrics
            )
            secs = sum(v for k, v in metrics.items() if k.startswith("timing_s/"))
            print(f"[ppo] step {metrics['step']} {shown} time={secs:.1f}s", flush=True)
        if self.wandb is not None:
            self.wandb.log(
                {k: v for k, v in metrics.items() if isinstance(v, int | float)}, step=metrics["step"]
            )

    def close(self) -> None:
        self.file.close()
        if self.wandb is not None:
            self.wandb.finish()


def _wandb_id(run_dir: Path) -> str:
    """A stable wandb run id per run folder, so a resumed run continues the same wandb run."""
    f = run_dir / "wandb_id.txt"
    if not f.exists():
        import wandb

        f.write_text(wandb.util.generate_id())
    return f.read_text().strip()


@entry_point
def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser(
        PPOConfig, "Single-machine PPO/GRPO for the search agent.", CONFIG_DIR / "rl" / "tiny_ppo.yaml"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the run folder's latest checkpoint"
    )
    args = parser.parse_intermixed_args(argv)
    overrides = list(args.overrides) + (["trainer.resume_mode=auto"] if args.resume else [])
    try:
        cfg = load_config(PPOConfig, args.config, overrides)
    except Exception as exc:  # OmegaConf raises several types; all are user errors here
        parser.exit(2, f"{parser.prog}: error: invalid config: {config_error(exc)}\n")
    try:
        run_dir = train(cfg)
    except (RetrieverAuthError, NotEnoughGroups) as exc:  # one line, not a traceback
        parser.exit(1, f"{parser.prog}: error: {exc}\n")
    print(f"[ppo] run folder: {run_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
