"""What a CPU machine can run of a verl RL run: one rollout + reward step through verl's own code.

verl's trainer needs GPUs and vLLM, so a config that only breaks inside the trainer would otherwise be
found on the GPU node. This module takes the same ``--config`` and Hydra overrides that
``train_ppo.sh`` hands to ``python -m search_r1.rl.verl_main`` (verl's ``main_ppo``) and:

1. composes and checks them (:func:`search_r1.rl.verl_config.check`: unknown keys, verl's
   ``validate_config``); a bad config exits 2 with one line;
2. runs verl's ``AgentLoopWorker`` with our :class:`~search_r1.rl.agent_loop.SearchAgentLoop` on the
   first ``rehearsal.rows`` rows of ``data.train_files`` (read by verl's dataset class, repeated
   ``rollout.n`` times as the trainer does), the actor model served by our HF engine behind
   :class:`InProcessServerManager`, against the real retriever of the agent-loop yaml (or
   ``rehearsal.retriever_url`` / ``rehearsal.retriever_token``);
3. scores the episodes through verl's reward loop (``RewardLoopWorker`` in process: it loads our
   ``compute_score`` with ``get_custom_reward_fn`` from the composed config) and builds the step
   metrics with verl's own functions (:func:`step_metrics`);
4. prints a summary and writes a JSON report; exits 1 when a search failed or a mask is wrong.

Usage::

    python -m search_r1.rl.verl_rehearsal --config configs/rl/qwen2.5-3b_nq_ppo.yaml [overrides] \\
        rehearsal.rows=4 rehearsal.out=report.json
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from search_r1.agent.engines.base import SamplingParams
from search_r1.agent.engines.hf import HFEngine
from search_r1.agent.protocol import INFO_OPEN
from search_r1.config import entry_point
from search_r1.paths import REPO_ROOT
from search_r1.rl.verl_config import RL_CONFIG_DIR

USAGE = """usage: python -m search_r1.rl.verl_rehearsal [--config NAME|PATH] [hydra overrides ...] [rehearsal.KEY=VALUE ...]

  --config              a verl config in configs/rl, by name (verl_ppo) or path (configs/rl/verl_ppo.yaml);
                        default verl_ppo
  hydra overrides       exactly what train_ppo.sh passes to search_r1.rl.verl_main (key=value, +key=value, ...)
  rehearsal.rows=N      how many rows of data.train_files to roll out (default 4; each rollout.n times)
  rehearsal.out=PATH    the JSON report (default <trainer.default_local_dir>/verl_rehearsal.json)
  rehearsal.retriever_url=URL      instead of the agent-loop yaml's retriever_url
  rehearsal.retriever_token=TOKEN  instead of the yaml's retriever_token (else SEARCH_R1_RETRIEVER_TOKEN)

Run from anywhere; relative paths resolve from the repository root, as train_ppo.sh runs verl there.
Exit status: 0 ok, 1 a search failed or a response mask is wrong, 2 bad config or arguments."""


@dataclass
class RehearsalArgs:
    config: str = "verl_ppo"
    overrides: tuple[str, ...] = ()
    rows: int = 4
    out: str | None = None
    retriever_url: str | None = None
    retriever_token: str | None = None


class BadConfig(Exception):
    """The config, its overrides or the rehearsal's own arguments are wrong (exit 2)."""


def parse_args(argv: Sequence[str]) -> RehearsalArgs:
    """``--config`` and ``rehearsal.*`` are ours; every other argument is a Hydra override, untouched."""
    args, overrides, rest = RehearsalArgs(), [], list(argv)
    while rest:
        arg = rest.pop(0)
        if arg in ("-h", "--help"):
            print(USAGE)
            raise SystemExit(0)
        if arg == "--config":
            if not rest:
                raise BadConfig("--config needs a name or a path")
            args.config = rest.pop(0)
        elif arg.startswith("--config="):
            args.config = arg.split("=", 1)[1]
        elif arg.startswith("rehearsal."):
            key, sep, value = arg[len("rehearsal.") :].partition("=")
            if not sep or key not in ("rows", "out", "retriever_url", "retriever_token"):
                raise BadConfig(
                    f"unknown rehearsal argument {arg!r} (rows, out, retriever_url, retriever_token)"
                )
            if key == "rows":
                if not value.isdigit() or int(value) < 1:
                    raise BadConfig(f"rehearsal.rows must be a positive integer, got {value!r}")
                args.rows = int(value)
            else:
                setattr(args, key, value)
        else:
            overrides.append(arg)
    args.overrides = tuple(overrides)
    return args


def config_name(config: str) -> str:
    """A verl config name in configs/rl from a name or a yaml path (train_ppo.sh checks them there)."""
    if not config.endswith((".yaml", ".yml")):
        return config
    path = Path(config).resolve()
    if path.parent != RL_CONFIG_DIR.resolve():
        raise BadConfig(f"{config}: verl configs live in {RL_CONFIG_DIR} (train_ppo.sh checks them there)")
    if not path.is_file():
        raise BadConfig(f"{config}: no such file")
    return path.stem


def compose_checked(args: RehearsalArgs) -> Any:
    """Our ``check`` on the exact overrides; every failure of composition or validation is a BadConfig."""
    from search_r1.rl.verl_config import check, config_errors, describe

    name = config_name(args.config)
    if not (RL_CONFIG_DIR / f"{name}.yaml").is_file():
        raise BadConfig(f"no verl config {name!r} in {RL_CONFIG_DIR}")
    try:
        return check(name, list(args.overrides))
    except config_errors() as exc:
        raise BadConfig(describe(name, exc)) from None


class InProcessServerManager:
    """verl's ``LLMServerClient.generate`` contract over the HF engine: vLLM-style sampling params in,
    ``TokenOutput`` out (ids cut at the first stop string, the stop string included). It stands in for
    verl's vLLM servers where there is no GPU; ``requests`` keeps every call's sampling params."""

    def __init__(self, engine: HFEngine):
        self.engine, self.requests = engine, []

    async def generate(self, request_id: str, *, prompt_ids: list[int], sampling_params: dict, **kwargs: Any):
        from verl.workers.rollout.replica import TokenOutput

        self.requests.append(dict(sampling_params))
        res = await self.engine.generate(
            prompt_ids,
            SamplingParams(
                max_new_tokens=sampling_params["max_tokens"],
                temperature=sampling_params["temperature"],
                top_p=sampling_params["top_p"],
                top_k=max(sampling_params["top_k"], 0),
                stop=sampling_params.get("stop", []),
                logprobs=sampling_params["logprobs"],
            ),
        )
        return TokenOutput(token_ids=res.token_ids, log_probs=res.logprobs, stop_reason="completed")


def in_process_reward_handle(cfg: Any) -> Any:
    """verl's ``RewardLoopWorker`` in this process, behind the one method ``AgentLoopWorker`` calls on
    its Ray handle (``handle.compute_score.remote(data)``, awaited). Build it inside the running event
    loop: the reward manager keeps the loop it was created on."""
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker

    worker = RewardLoopWorker(cfg)
    return SimpleNamespace(compute_score=SimpleNamespace(remote=worker.compute_score))


def step_metrics(cfg: Any, batch: Any) -> dict[str, dict[str, float]]:
    """The metrics verl logs for this batch, computed by verl's own functions.

    ``batch`` is the trainer's batch after generation: the input rows (with ``uid``) united with what
    ``AgentLoopWorker`` returned when it scored through the reward loop (``rm_scores`` + reward extra
    info). ``train`` is ``compute_data_metrics`` after ``compute_advantage`` with the config's estimator,
    as every training step logs it (no critic here: GAE runs with values 0 and critic metrics are
    left out). ``val`` is what a validation step logs from the same episodes: verl's V1
    ``_val_metrics_update`` over the reward and each reward-extra-info key, as ``_validate`` collects them.
    """
    from verl.trainer.ppo.metric_utils import compute_data_metrics
    from verl.trainer.ppo.ray_trainer import compute_advantage
    from verl.trainer.ppo.reward import extract_reward
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    reward_tensor, extra = extract_reward(batch)
    batch.batch["token_level_scores"] = reward_tensor
    batch.batch["token_level_rewards"] = reward_tensor
    batch.batch["values"] = torch.zeros_like(reward_tensor)
    algo = cfg.algorithm
    batch = compute_advantage(
        batch,
        adv_estimator=algo.adv_estimator,
        gamma=algo.gamma,
        lam=algo.lam,
        num_repeat=cfg.actor_rollout_ref.rollout.n,
        norm_adv_by_std_in_grpo=algo.get("norm_adv_by_std_in_grpo", True),
        config=algo,
    )
    train = compute_data_metrics(batch=batch, use_critic=False)

    scores = reward_tensor.sum(-1).tolist()
    infos = {"reward": scores, **{k: list(np.asarray(v).tolist()) for k, v in extra.items()}}
    val = PPOTrainer._val_metrics_update(  # uses no trainer state; called unbound to run verl's exact code
        None,
        list(batch.non_tensor_batch["data_source"]),
        list(batch.non_tensor_batch["uid"]),
        infos,
        batch.non_tensor_batch["__num_turns__"].tolist(),
    )
    as_float = lambda d: {k: float(v) for k, v in d.items()}  # noqa: E731
    return {"train": as_float(train), "val": as_float(val)}


def mask_check(tokenizer: Any, batch: Any) -> dict[str, Any]:
    """Per episode: padding is masked; exactly the tokens the environment appended (the agent loop's
    ``observation_tokens``) have mask 0, and they decode to observation blocks; an episode that searched
    and then answered has the information block among them. What the policy itself wrote is not
    judged: a model may well write a tag it saw in its observations."""
    responses, mask = batch.batch["responses"], batch.batch["response_mask"]
    attn = batch.batch["attention_mask"][:, batch.batch["prompts"].shape[1] :].bool()
    nt = batch.non_tensor_batch
    searches, finish, appended = nt["searches"], nt["finish_reason"], nt["observation_tokens"]
    bad: list[int] = []
    for i in range(len(responses)):
        env = (mask[i] == 0) & attn[i]
        observed = tokenizer.decode(responses[i][env], skip_special_tokens=False)
        ok = bool(torch.all(mask[i][~attn[i]] == 0)) and int(env.sum()) == int(appended[i])
        ok = ok and (not observed or observed.startswith(f"\n\n{INFO_OPEN}"))
        if int(searches[i]) > 0 and finish[i] == "answer":
            ok = ok and INFO_OPEN in observed
        if not ok:
            bad.append(i)
    return {
        "ok": not bad,
        "bad_episodes": bad,
        "policy_tokens": int(mask.sum()),
        "observation_tokens": int(((mask == 0) & attn).sum()),
    }


def _resolve(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else REPO_ROOT / p


def first_rows(train_files: Any, n: int, out: Path) -> Path:
    """The first ``n`` rows of the (first) training parquet, as a parquet of their own (verl's dataset
    class then reads, filters and formats them exactly as it would the full file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = [train_files] if isinstance(train_files, str) else list(train_files)
    path = _resolve(files[0])
    if not path.is_file():
        raise BadConfig(f"data.train_files: no such file {path}")
    try:
        batch = next(pq.ParquetFile(path).iter_batches(batch_size=n))
    except (pa.ArrowInvalid, StopIteration):
        raise BadConfig(f"data.train_files: {path} is not a parquet file with rows") from None
    pq.write_table(pa.Table.from_batches([batch]), out)
    return out


def agent_loop_file(cfg: Any, args: RehearsalArgs, tmp: Path) -> dict[str, Any]:
    """The agent-loop entry the rollout uses; with a retriever URL/token from the command line, a copy of
    the yaml carrying them becomes ``agent_loop_config_path`` (verl reads the file in each worker)."""
    from omegaconf import OmegaConf

    agent = cfg.actor_rollout_ref.rollout.agent
    entries = OmegaConf.load(_resolve(agent.agent_loop_config_path))
    entry = next((e for e in entries if e.name == agent.default_agent_loop), None)
    if entry is None:
        raise BadConfig(f"{agent.agent_loop_config_path} has no agent loop {agent.default_agent_loop!r}")
    if args.retriever_url is not None or args.retriever_token is not None:
        if args.retriever_url is not None:
            entry.retriever_url = args.retriever_url
        if args.retriever_token is not None:
            entry.retriever_token = args.retriever_token
        path = tmp / "agent_loops.yaml"
        OmegaConf.save(entries, path)
        agent.agent_loop_config_path = str(path)
    return OmegaConf.to_container(entry)


async def generate(cfg: Any, server_manager: Any, batch: Any) -> Any:
    """verl's V0 trainer step up to the reward, on ``batch`` (rows with ``uid``): ``_get_gen_batch``,
    ``repeat`` by ``rollout.n``, ``AgentLoopWorker.generate_sequences`` scoring each episode through the
    reward loop (verl's ``RewardLoopWorker``, in process), then the rows repeated and united with it."""
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer

    n = cfg.actor_rollout_ref.rollout.n
    gen_batch = RayPPOTrainer._get_gen_batch(None, batch).repeat(repeat_times=n, interleave=True)  # no state
    worker = AgentLoopWorker(cfg, server_manager, None, [in_process_reward_handle(cfg)])
    out = await worker.generate_sequences(gen_batch)
    return batch.repeat(repeat_times=n, interleave=True).union(out)


async def rollout(cfg: Any, rows_file: Path) -> tuple[Any, Any]:
    """verl's dataset over the rows → :func:`generate` with the actor model behind the in-process server
    manager. Returns the trainer's batch and the tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from verl.protocol import DataProto
    from verl.utils.dataset.rl_dataset import collate_fn, get_dataset_class

    model_path = str(_resolve(cfg.actor_rollout_ref.model.path))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    dataset = get_dataset_class(cfg.data)(data_files=[str(rows_file)], tokenizer=tokenizer, config=cfg.data)
    if len(dataset) == 0:
        raise BadConfig(
            "no row of data.train_files survives verl's dataset filters (data.max_prompt_length?)"
        )
    batch = DataProto.from_single_dict(collate_fn([dataset[i] for i in range(len(dataset))]))
    batch.non_tensor_batch["uid"] = np.array([str(uuid.uuid4()) for _ in range(len(batch))], dtype=object)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_path).to(device)
    return await generate(cfg, InProcessServerManager(HFEngine(model, tokenizer)), batch), tokenizer


def report(
    cfg: Any, args: RehearsalArgs, entry: dict[str, Any], batch: Any, metrics: dict, masks: dict
) -> dict:
    nt = batch.non_tensor_batch
    searches = [int(s) for s in nt["searches"]]
    failures = [int(f) for f in nt["retrieval_failures"]]
    a, rollout = cfg.actor_rollout_ref.actor, cfg.actor_rollout_ref.rollout
    return {
        "config": {
            "name": config_name(args.config),
            "overrides": list(args.overrides),
            "model_path": cfg.actor_rollout_ref.model.path,
            "nnodes": cfg.trainer.nnodes,
            "n_gpus_per_node": cfg.trainer.n_gpus_per_node,
            "train_batch_size": cfg.data.train_batch_size,
            "ppo_mini_batch_size": a.ppo_mini_batch_size,
            "ppo_micro_batch_size_per_gpu": a.ppo_micro_batch_size_per_gpu,
            "rollout_n": rollout.n,
            "adv_estimator": cfg.algorithm.adv_estimator,
            "use_v1_trainer": cfg.trainer.use_v1,
            "train_files": cfg.data.train_files,
            "max_prompt_length": cfg.data.max_prompt_length,
            "max_response_length": cfg.data.max_response_length,
            "retriever_url": entry.get("retriever_url"),
            "retriever_token_set": bool(
                entry.get("retriever_token") or os.environ.get("SEARCH_R1_RETRIEVER_TOKEN")
            ),
        },
        "rows": len(batch) // rollout.n,
        "episodes": len(batch),
        "mean_reward": metrics["train"]["critic/score/mean"],
        "searches": sum(searches),
        "searches_per_question": sum(searches) / len(searches),
        "retrieval_failures": sum(failures),
        "invalid_actions": sum(int(x) for x in nt["invalid_actions"]),
        "answer_rate": float(np.mean([float(x) for x in nt["has_answer"]])),
        "finish_reasons": dict(Counter(str(r) for r in nt["finish_reason"])),
        "response_mask": masks,
        "step_metrics": metrics,
    }


def summary(rep: dict) -> str:
    c, m = rep["config"], rep["response_mask"]
    return "\n".join(
        [
            f"verl rehearsal of {c['name']}: model {c['model_path']}, {c['nnodes']}x{c['n_gpus_per_node']} GPUs, "
            f"batch {c['train_batch_size']} (mini {c['ppo_mini_batch_size']}), n={c['rollout_n']}, "
            f"{c['adv_estimator']}",
            f"  {rep['rows']} rows, {rep['episodes']} episodes against {c['retriever_url']}",
            f"  mean reward {rep['mean_reward']:.3f}, answer rate {rep['answer_rate']:.3f}",
            f"  searches {rep['searches']} ({rep['searches_per_question']:.2f} per episode), "
            f"retrieval failures {rep['retrieval_failures']}, invalid actions {rep['invalid_actions']}",
            f"  response mask: {'ok' if m['ok'] else 'WRONG in episodes ' + str(m['bad_episodes'])} "
            f"({m['policy_tokens']} policy, {m['observation_tokens']} observation tokens)",
        ]
    )


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_args(argv)
        if args.config.endswith((".yaml", ".yml")):
            args.config = str(Path(args.config).resolve())
        out = Path(args.out).resolve() if args.out else None
        os.chdir(REPO_ROOT)  # as train_ppo.sh: relative paths in the configs resolve from the repository
        cfg = compose_checked(args)
        with tempfile.TemporaryDirectory() as tmp:
            entry = agent_loop_file(cfg, args, Path(tmp))
            rows_file = first_rows(cfg.data.train_files, args.rows, Path(tmp) / "rows.parquet")
            if not (_resolve(cfg.actor_rollout_ref.model.path) / "config.json").is_file():
                raise BadConfig(
                    f"actor_rollout_ref.model.path: no HF model at {cfg.actor_rollout_ref.model.path}"
                )
            batch, tokenizer = asyncio.run(rollout(cfg, rows_file))
    except BadConfig as exc:
        print(f"verl_rehearsal: bad config: {exc}", file=sys.stderr)
        return 2
    rep = report(cfg, args, entry, batch, step_metrics(cfg, batch), mask_check(tokenizer, batch))
    out = out or _resolve(cfg.trainer.default_local_dir) / "verl_rehearsal.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rep, indent=2, default=str))
    print(summary(rep))
    print(f"  report: {out}")
    problems = [f"{rep['retrieval_failures']} retrieval failures"] if rep["retrieval_failures"] else []
    problems += [] if rep["response_mask"]["ok"] else ["wrong response masks"]
    if problems:
        print(f"verl_rehearsal: FAILED: {', '.join(problems)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
