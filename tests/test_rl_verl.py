"""verl guarantees checkable on CPU: our Hydra configs over verl's defaults, verl loading our reward,
and our agent loop run by verl's own AgentLoopWorker against an in-process server manager."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from agent_fixtures import QUESTION, TOY_CFG, MemoryRetriever, toy_tokenizer  # noqa: E402

from search_r1.agent.engines.hf import HFEngine  # noqa: E402
from search_r1.agent.protocol import INFO_OPEN, STOP_STRINGS  # noqa: E402
from search_r1.paths import REPO_ROOT  # noqa: E402
from search_r1.rl.verl_config import check, compose_config  # noqa: E402
from search_r1.rl.verl_rehearsal import InProcessServerManager  # noqa: E402

CONFIGS = ("verl_ppo", "verl_grpo", "qwen2.5-3b_nq_ppo")


def _toy_loop_config(
    tmp_path: Path, toy_dir: Path, protocol_overrides: list[str], name: str = "verl_ppo", *extra: str
):
    """Our verl config for the toy model, with an agent-loop yaml whose protocol fits its context."""
    loops = tmp_path / "agent_loops.yaml"
    loops.write_text(
        f"- name: search_r1_agent\n  _target_: search_r1.rl.agent_loop.SearchAgentLoop\n"
        f"  retriever_url: http://127.0.0.1:1\n  protocol: configs/agent/tiny.yaml\n"
        f"  protocol_overrides: {protocol_overrides}\n"
    )
    return compose_config(
        name,
        [
            f"actor_rollout_ref.model.path={toy_dir}",
            f"actor_rollout_ref.rollout.agent.agent_loop_config_path={loops}",
            "data.max_prompt_length=128",
            "data.max_response_length=512",
            "actor_rollout_ref.rollout.temperature=0",
            *extra,
        ],
    )


@pytest.mark.parametrize("name", CONFIGS)
def test_config_composes_over_verl_defaults_and_validates(name, toy_dir) -> None:
    cfg = check(name, [f"actor_rollout_ref.model.path={toy_dir}"])  # raises on unknown keys / invalid values
    from verl.trainer.ppo.utils import need_critic, need_reference_policy

    assert cfg.actor_rollout_ref.rollout.agent.default_agent_loop == "search_r1_agent"
    assert cfg.reward.custom_reward_function.path == "search_r1/rewards/score.py"
    assert need_reference_policy(cfg)
    assert need_critic(cfg) == (name != "verl_grpo")
    assert cfg.critic.model.path == cfg.actor_rollout_ref.model.path  # actor, ref and critic start alike


def test_misspelled_key_is_rejected(toy_dir) -> None:
    with pytest.raises(ValueError, match=r"actor_rollout_ref\.actor\.clip_ration"):
        check(
            "verl_ppo",
            [f"actor_rollout_ref.model.path={toy_dir}", "+actor_rollout_ref.actor.clip_ration=0.1"],
        )


def test_verl_loads_our_reward_function(monkeypatch) -> None:
    from verl.trainer.ppo.reward import get_custom_reward_fn

    monkeypatch.chdir(REPO_ROOT)  # verl resolves custom_reward_function.path from the working directory
    fn = get_custom_reward_fn(compose_config("verl_ppo"))
    gold = {"target": ["Velmora"]}
    right = fn(
        data_source="world", solution_str="<think>t</think><answer> Velmora </answer>", ground_truth=gold
    )
    wrong = fn(
        data_source="world", solution_str="<think>t</think><answer> Zorland </answer>", ground_truth=gold
    )
    assert right["score"] == 1.0 and right["em"] == 1.0 and wrong["score"] == 0.0


def test_agent_loop_in_verl_worker_returns_our_observation_mask(toy_dir, tmp_path, monkeypatch) -> None:
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker
    from verl.protocol import DataProto
    from verl.trainer.ppo import core_algos

    import search_r1.rl.agent_loop as agent_loop
    from search_r1.rl.algos import policy_loss_config
    from search_r1.rl.config import ActorConfig
    from search_r1.rl.trainer import actor_loss

    overrides = [
        f"{k}={getattr(TOY_CFG, k)}"
        for k in ("max_turns", "topk", "max_obs_tokens", "max_turn_tokens", "max_response_tokens")
    ]
    retriever = MemoryRetriever()
    monkeypatch.setattr(agent_loop, "_client", lambda *args: retriever)
    cfg = _toy_loop_config(tmp_path, toy_dir, overrides)
    tok = toy_tokenizer()
    from transformers import AutoModelForCausalLM

    manager = InProcessServerManager(HFEngine(AutoModelForCausalLM.from_pretrained(toy_dir), tok))
    worker = AgentLoopWorker(cfg, manager)
    n = 2
    batch = DataProto.from_dict(
        non_tensors={
            "raw_prompt": np.array([[{"role": "user", "content": QUESTION}]] * n, dtype=object),
            "data_source": np.array(["world"] * n, dtype=object),
            "reward_model": np.array(
                [{"style": "rule", "ground_truth": {"target": ["Velmora"]}}] * n, dtype=object
            ),
            "extra_info": np.array([{"uid": f"world-train-{i}"} for i in range(n)], dtype=object),
            "index": np.arange(n),
        }
    )
    out = asyncio.run(worker.generate_sequences(batch))

    assert manager.requests and all(
        r["stop"] == list(STOP_STRINGS) and r["include_stop_str_in_output"] for r in manager.requests
    )
    responses, mask = out.batch["responses"], out.batch["response_mask"]
    attn = out.batch["attention_mask"][:, out.batch["prompts"].shape[1] :]
    assert retriever.calls == n and list(out.non_tensor_batch["searches"]) == [1] * n
    for i in range(n):
        policy = tok.decode(responses[i][mask[i].bool()])
        observed = tok.decode(responses[i][(mask[i] == 0) & attn[i].bool()])
        assert "<search>" in policy and "<answer>" in policy and INFO_OPEN not in policy
        assert observed.startswith(f"\n\n{INFO_OPEN}") and "Velmora" in observed
        assert torch.all(mask[i][attn[i] == 0] == 0)  # padding is masked too

    # verl's losses on this batch give the observation tokens zero gradient
    m = mask.float()
    logp = torch.randn(m.shape, requires_grad=True)
    a = ActorConfig()
    loss, _ = actor_loss(
        a,
        core_algos.get_policy_loss_fn("vanilla"),
        policy_loss_config(a),
        logp,
        torch.zeros_like(m),
        logp.detach() - 0.1,
        logp.detach() + 0.1,
        torch.randn(m.shape),
        m,
    )
    loss.backward()
    assert torch.all(logp.grad[(m == 0)] == 0) and logp.grad[m > 0].abs().sum() > 0


# Keys inside verl's free-form dicts: our reward variant, and sdpa for a node without flash-attn.
REWARD_VARIANT = "+reward.custom_reward_function.reward_kwargs.reward=em_format"
SDPA = (
    "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
    "+critic.model.override_config.attn_implementation=sdpa",
)


def test_free_form_overrides_pass_the_check_and_reach_verl(toy_dir, monkeypatch) -> None:
    """The documented reward-variant and attention overrides pass ``check`` (and so verl's
    ``validate_config``), and verl's own loaders see them: ``get_custom_reward_fn`` calls our reward
    with ``reward=em_format`` and ``HFModelConfig`` loads the model config with sdpa attention."""
    from verl.trainer.ppo.reward import get_custom_reward_fn
    from verl.utils.config import omega_conf_to_dataclass

    cfg = check(
        "verl_ppo",
        [f"actor_rollout_ref.model.path={toy_dir}", f"critic.model.path={toy_dir}", REWARD_VARIANT, *SDPA],
    )
    for model in (cfg.actor_rollout_ref.model, cfg.critic.model):
        assert omega_conf_to_dataclass(model).hf_config._attn_implementation == "sdpa"

    monkeypatch.chdir(REPO_ROOT)
    fn = get_custom_reward_fn(cfg)
    gold = {"target": ["Velmora"]}
    # em_format gives a well-formed wrong answer the format score; plain em would give 0
    wrong = fn(
        data_source="world", solution_str="<think>t</think><answer> Zorland </answer>", ground_truth=gold
    )
    assert wrong["score"] == pytest.approx(0.2)


def test_free_form_nodes_come_from_verl_defaults() -> None:
    from search_r1.rl.verl_config import free_form_nodes, verl_defaults

    free = free_form_nodes(verl_defaults())
    assert {
        "actor_rollout_ref.model.override_config",
        "critic.model.override_config",
        "actor_rollout_ref.rollout.engine_kwargs.vllm",
        "reward.custom_reward_function.reward_kwargs",
    } <= free
    assert "actor_rollout_ref.actor" not in free and "actor_rollout_ref.model" not in free


def test_misspelled_key_beside_a_free_form_dict_is_rejected(toy_dir) -> None:
    """Only keys *inside* a free-form dict are free: a typo of the dict's own name still fails."""
    with pytest.raises(ValueError, match=r"actor_rollout_ref\.model\.override_confg\.attn_implementation"):
        check(
            "verl_ppo",
            [
                f"actor_rollout_ref.model.path={toy_dir}",
                "+actor_rollout_ref.model.override_confg.attn_implementation=sdpa",
            ],
        )


def _scored_batch(toy_dir: Path, tmp_path: Path, monkeypatch, retriever, name: str, n: int = 2):
    """The trainer's batch after generation (verl_rehearsal.generate: verl's AgentLoopWorker scoring
    through verl's RewardLoopWorker, in process, with our compute_score)."""
    from verl.protocol import DataProto

    import search_r1.rl.agent_loop as agent_loop
    from search_r1.rl.verl_rehearsal import generate

    overrides = [f"max_turns={TOY_CFG.max_turns}", f"topk={TOY_CFG.topk}", "max_response_tokens=400"]
    monkeypatch.setattr(agent_loop, "_client", lambda *args: retriever)
    monkeypatch.chdir(REPO_ROOT)  # verl resolves custom_reward_function.path from the working directory
    cfg = _toy_loop_config(tmp_path, toy_dir, overrides, name, "actor_rollout_ref.rollout.n=1")
    from transformers import AutoModelForCausalLM

    manager = InProcessServerManager(HFEngine(AutoModelForCausalLM.from_pretrained(toy_dir), toy_tokenizer()))
    batch = DataProto.from_dict(
        tensors={"dummy_tensor": torch.zeros(n, 1, dtype=torch.uint8)},  # as verl's dataset gives it
        non_tensors={
            "raw_prompt": np.array([[{"role": "user", "content": QUESTION}]] * n, dtype=object),
            "data_source": np.array(["world"] * n, dtype=object),
            "reward_model": np.array(
                [{"style": "rule", "ground_truth": {"target": ["Velmora"]}}] * n, dtype=object
            ),
            "extra_info": np.array([{"uid": f"world-train-{i}"} for i in range(n)], dtype=object),
            "index": np.arange(n),
            "uid": np.array([f"u{i}" for i in range(n)], dtype=object),
        },
    )

    return cfg, asyncio.run(generate(cfg, manager, batch))


@pytest.mark.parametrize("name", ["verl_ppo", "verl_grpo"])
def test_step_metrics_carry_searches_failures_invalid_and_answer_rate(
    toy_dir, tmp_path, monkeypatch, name
) -> None:
    """verl's own metric code on the scored batch: searches, retrieval failures, invalid actions and the
    answer rate are in the validation metrics (from compute_score's dict), searches in V0's training
    metrics (tool_call_counts); the reward is the training step's critic/score."""
    from search_r1.rl.verl_rehearsal import step_metrics

    cfg, batch = _scored_batch(toy_dir, tmp_path, monkeypatch, MemoryRetriever(), name)
    m = step_metrics(cfg, batch)
    assert m["val"]["val-aux/world/searches/mean@1"] == 1.0
    assert m["val"]["val-aux/world/retrieval_failures/mean@1"] == 0.0
    assert m["val"]["val-aux/world/invalid_actions/mean@1"] == 0.0
    assert m["val"]["val-aux/world/has_answer/mean@1"] == 1.0
    assert m["val"]["val-core/world/reward/mean@1"] == 1.0 == m["train"]["critic/score/mean"]
    assert m["train"]["tool_call_counts/mean"] == 1.0
    assert batch.non_tensor_batch["min_global_steps"].tolist() == [None, None]  # the stand-in reports none


def test_retriever_outage_shows_in_step_metrics(toy_dir, tmp_path, monkeypatch) -> None:
    from search_r1.retrieval.client import RetrieverUnavailable
    from search_r1.rl.verl_rehearsal import step_metrics

    down = MemoryRetriever(fail_with=RetrieverUnavailable("connection refused"))
    cfg, batch = _scored_batch(toy_dir, tmp_path, monkeypatch, down, "verl_ppo")
    m = step_metrics(cfg, batch)["val"]
    assert m["val-aux/world/retrieval_failures/mean@1"] == m["val-aux/world/searches/mean@1"] > 0
    assert down.calls == int(batch.non_tensor_batch["retrieval_failures"].sum())


def test_agent_loop_passes_the_retriever_token_and_keys_clients_by_it(monkeypatch) -> None:
    import search_r1.rl.agent_loop as agent_loop

    monkeypatch.setenv("SEARCH_R1_RETRIEVER_TOKEN", "from-env")

    async def clients():
        return (
            agent_loop._client("http://127.0.0.1:1", 5.0, "secret"),
            agent_loop._client("http://127.0.0.1:1", 5.0, None),
            agent_loop._client("http://127.0.0.1:1", 5.0, "secret"),
        )

    given, env, again = asyncio.run(clients())
    assert given is again and given is not env
    headers = [c._http.headers.get("authorization") for c in (given, env)]
    assert headers == ["Bearer secret", "Bearer from-env"]


def test_importing_the_agent_loop_keeps_the_yaml_registration() -> None:
    """verl imports our module lazily, after its worker registered the yaml entry: that entry (retriever
    URL, protocol) must survive the import, or every episode but the first runs with the defaults."""
    import importlib

    from verl.experimental.agent_loop.agent_loop import _agent_loop_registry

    import search_r1.rl.agent_loop as agent_loop

    entry = {"_target_": "search_r1.rl.agent_loop.SearchAgentLoop", "retriever_url": "http://retriever:9"}
    saved = _agent_loop_registry.get(agent_loop.AGENT_NAME)
    _agent_loop_registry[agent_loop.AGENT_NAME] = entry
    try:
        importlib.reload(agent_loop)
        assert _agent_loop_registry[agent_loop.AGENT_NAME] is entry
    finally:
        _agent_loop_registry[agent_loop.AGENT_NAME] = saved


class FakeTransferQueue:
    """transfer_queue's KV calls that verl's V1 agent-loop worker, its batch padding and our metrics make,
    kept in memory: TQ's controller and storage are Ray actors, which these CPU tests do not start. Rows
    are stored per key as verl puts them and returned as a TensorDict built by verl's own
    ``list_of_dict_to_tensordict``; tags are merged per key as TQ does."""

    def __init__(self) -> None:
        self.rows: dict[str, dict] = {}
        self.tags: dict[str, dict] = {}

    def kv_batch_put(self, keys, partition_id, fields=None, tags=None) -> None:
        from tensordict import NonTensorStack

        for i, key in enumerate(keys):
            if fields is not None:
                cols = {name: fields.get(name) for name in list(fields.keys())}
                self.rows[key] = {
                    name: col.tolist()[i] if isinstance(col, NonTensorStack) else col.unbind(0)[i]
                    for name, col in cols.items()
                }
            self.tags.setdefault(key, {}).update((tags or [{}] * len(keys))[i])

    async def async_kv_batch_put(self, keys, partition_id, fields=None, tags=None) -> None:
        self.kv_batch_put(keys, partition_id, fields, tags)

    async def async_kv_put(self, key, partition_id, fields=None, tag=None) -> None:
        self.tags.setdefault(key, {}).update(tag or {})

    def kv_batch_get(self, keys, partition_id, select_fields=None):
        from verl.utils.tensordict_utils import list_of_dict_to_tensordict

        names = select_fields or list(self.rows[keys[0]])
        return list_of_dict_to_tensordict([{n: self.rows[k][n] for n in names} for k in keys])


def _v1_step_batch(toy_dir: Path, tmp_path: Path, monkeypatch, retriever, n: int = 3):
    """A training step's batch as the V1 trainer sees it: our SearchAgentLoop run by verl's
    ``AgentLoopWorkerTQ`` (its own code builds the per-sample fields and tags and puts them into
    TransferQueue), then padded by verl's ``upsample_batch_to_divisible_size`` to a multiple of 4,
    as ``_balance_batch`` does for the data-parallel size."""
    import transfer_queue as tq
    from transfer_queue.metadata import KVBatchMeta
    from transformers import AutoModelForCausalLM
    from verl.trainer.ppo.padding_utils import upsample_batch_to_divisible_size
    from verl.trainer.ppo.v1.agent_loop_tq import AgentLoopWorkerTQ
    from verl.utils import tensordict_utils as tu

    import search_r1.rl.agent_loop as agent_loop

    store = FakeTransferQueue()
    for name in ("kv_batch_put", "async_kv_batch_put", "async_kv_put", "kv_batch_get"):
        monkeypatch.setattr(tq, name, getattr(store, name))
    monkeypatch.setattr(tq, "init", lambda *args, **kwargs: None)
    overrides = [f"max_turns={TOY_CFG.max_turns}", f"topk={TOY_CFG.topk}", "max_response_tokens=400"]
    monkeypatch.setattr(agent_loop, "_client", lambda *args: retriever)
    cfg = _toy_loop_config(tmp_path, toy_dir, overrides, "verl_ppo", "actor_rollout_ref.rollout.n=1")
    tok = toy_tokenizer()
    manager = InProcessServerManager(HFEngine(AutoModelForCausalLM.from_pretrained(toy_dir), tok))
    prompts = tu.get_tensordict(
        {
            "raw_prompt": np.array([[{"role": "user", "content": QUESTION}]] * n, dtype=object),
            "data_source": np.array(["world"] * n, dtype=object),
            "reward_model": np.array(
                [{"style": "rule", "ground_truth": {"target": ["Velmora"]}}] * n, dtype=object
            ),
            "extra_info": np.array([{"uid": f"world-train-{i}"} for i in range(n)], dtype=object),
            "index": np.arange(n),
            "uid": np.array([f"u{i}" for i in range(n)], dtype=object),
        }
    )
    tu.assign_non_tensor_data(prompts, "global_steps", 1)

    async def rollout() -> None:
        worker = AgentLoopWorkerTQ.__ray_actor_class__(cfg, manager)
        await worker.generate_sequences(prompts)
        await asyncio.gather(*set(worker.background_tasks))

    asyncio.run(rollout())
    keys = sorted(k for k, tag in store.tags.items() if tag.get("status") == "success")
    assert len(keys) == n, store.tags
    batch = KVBatchMeta(keys=keys, tags=[store.tags[k] for k in keys], partition_id="train")
    return upsample_batch_to_divisible_size(batch, 4, tok.eos_token_id), store


@pytest.mark.parametrize("down", [False, True], ids=["retriever_up", "retriever_down"])
def test_v1_training_step_logs_search_metrics(toy_dir, tmp_path, monkeypatch, down) -> None:
    """Our trainer wrapper on verl's sync trainer, over a real V1 step batch (3 episodes + 1 padding copy
    of the first): the parent's ``_compute_metrics`` (a recorder here: the real one reads tensors from
    TransferQueue) runs first, then our keys are added, from the non-padding episodes only."""
    from verl.trainer.ppo.v1 import PPOTrainerSync

    from search_r1.retrieval.client import RetrieverUnavailable
    from search_r1.rl.verl_main import search_metrics, step_extra_fields, with_search_metrics

    retriever = MemoryRetriever(fail_with=RetrieverUnavailable("connection refused") if down else None)
    batch, store = _v1_step_batch(toy_dir, tmp_path, monkeypatch, retriever)
    assert [bool(t.get("is_padding")) for t in batch.tags] == [False, False, False, True]
    assert "searches" not in batch.tags[0]  # verl's tags do not carry the loop's extra fields
    assert store.rows[batch.keys[-1]]["extra_fields"]["searches"] == 1  # the padding copies an episode

    calls: list[tuple] = []

    def parent(self, batch, metrics, timing_raw, global_steps, epoch) -> None:
        calls.append((global_steps, epoch, sorted(metrics)))
        metrics["critic/score/mean"] = 0.5

    monkeypatch.setattr(PPOTrainerSync, "_compute_metrics", parent)
    trainer_cls = with_search_metrics(PPOTrainerSync)
    assert issubclass(trainer_cls, PPOTrainerSync) and trainer_cls.search_r1_wrapped is PPOTrainerSync
    metrics = {"timing_s/step": 1.0}
    object.__new__(trainer_cls)._compute_metrics(batch, metrics, {}, global_steps=7, epoch=0)

    assert calls == [(7, 0, ["timing_s/step"])]  # the parent ran first, before any key of ours
    assert metrics["critic/score/mean"] == 0.5
    assert retriever.calls == 3  # one search per episode; the padding copy is not counted
    fields = step_extra_fields(batch)
    assert len(fields) == 3
    # After a failure observation the toy model is off its scripted episodes, so what it does next
    # (and how many invalid actions) is whatever its untrained continuation is: counted, not assumed.
    invalid = sum(f["invalid_actions"] for f in fields) / 3 if down else 0.0
    expected = {
        "search_r1/searches_per_question": 1.0,
        "search_r1/retrieval_failures_total": 3.0 if down else 0.0,
        "search_r1/retrieval_failures_per_question": 1.0 if down else 0.0,
        "search_r1/invalid_actions_per_question": invalid,
    }
    assert {k: metrics[k] for k in expected} == expected
    answered = sum(f["finish_reason"] == "answer" for f in fields) / 3
    assert metrics["search_r1/answer_rate"] == answered == search_metrics(fields)["search_r1/answer_rate"]
    well_formed = sum(f["format_valid"] for f in fields) / 3
    assert metrics["search_r1/format_valid"] == well_formed
    if not down:
        assert answered == 1.0 and well_formed == 1.0  # the toy model thinks, searches, then answers


def test_search_metrics_counts_and_empty_step() -> None:
    from search_r1.rl.verl_main import search_metrics

    fields = [
        {
            "searches": 2,
            "retrieval_failures": 2,
            "invalid_actions": 1,
            "finish_reason": "answer",
            "format_valid": False,
        },
        {
            "searches": 0,
            "retrieval_failures": 0,
            "invalid_actions": 0,
            "finish_reason": "length",
            "format_valid": True,
        },
    ]
    assert search_metrics(fields) == {
        "search_r1/searches_per_question": 1.0,
        "search_r1/retrieval_failures_total": 2.0,
        "search_r1/retrieval_failures_per_question": 1.0,
        "search_r1/invalid_actions_per_question": 0.5,
        "search_r1/answer_rate": 0.5,
        "search_r1/format_valid": 0.5,
    }
    assert search_metrics([]) == {}  # an all-padding step logs nothing rather than NaN


def test_task_runner_installs_the_wrapper_for_the_configured_mode(monkeypatch) -> None:
    """Our TaskRunner's ``run`` (in the Ray actor's process) swaps the registered trainer of
    ``trainer.v1.trainer_mode`` for the wrapper before verl's ``run`` looks it up; the name stays."""
    from omegaconf import OmegaConf
    from verl.trainer.main_ppo import TaskRunnerV1
    from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY, get_trainer_cls

    from search_r1.rl.verl_main import SearchTaskRunner, SearchTaskRunnerActor

    original = TRAINER_REGISTRY["separate_async"]
    monkeypatch.setitem(TRAINER_REGISTRY, "separate_async", original)  # restored afterwards
    looked_up: list[type] = []
    monkeypatch.setattr(
        TaskRunnerV1.__ray_actor_class__,
        "run",
        lambda self, config: looked_up.append(get_trainer_cls(config.trainer.v1.trainer_mode)),
    )
    config = OmegaConf.create({"trainer": {"v1": {"trainer_mode": "separate_async"}}})
    SearchTaskRunner().run(config)
    SearchTaskRunner().run(config)  # idempotent: no wrapper of a wrapper
    assert looked_up[0] is looked_up[1] and looked_up[0].search_r1_wrapped is original
    assert SearchTaskRunnerActor.__ray_actor_class__ is SearchTaskRunner


@pytest.mark.parametrize("use_v1", [True, False])
def test_verl_main_composes_like_train_ppo_sh_and_picks_the_task_runner(
    toy_dir, tmp_path, monkeypatch, use_v1
) -> None:
    """``search_r1.rl.verl_main.main`` with train_ppo.sh's arguments: our config composed over verl's
    through the same --config-path/--config-name/searchpath, validated, and run with our TaskRunner
    (V1) or verl's legacy one; ``run_ppo`` is replaced by a recorder, so Ray is not started."""
    import verl.trainer.main_ppo as verl_main_ppo
    from verl.trainer.main_ppo_v0 import TaskRunner

    import search_r1.rl.verl_main as verl_main
    from search_r1.rl.verl_config import RL_CONFIG_DIR, SEARCHPATH

    runs: list[tuple] = []
    record = lambda config, task_runner_class: runs.append((config, task_runner_class))  # noqa: E731
    monkeypatch.setattr(verl_main, "run_ppo", record)
    monkeypatch.setattr(verl_main_ppo, "run_ppo", record)
    argv = [f"--config-path={RL_CONFIG_DIR}", "--config-name=verl_ppo", SEARCHPATH]
    overrides = [f"actor_rollout_ref.model.path={toy_dir}", f"trainer.use_v1={use_v1}"]
    hydra_dirs = [f"hydra.run.dir={tmp_path}", "hydra.output_subdir=null"]
    monkeypatch.setattr(sys, "argv", ["verl_main", *argv, *overrides, *hydra_dirs])
    verl_main.main()

    [(config, runner)] = runs
    assert runner is (verl_main.SearchTaskRunnerActor if use_v1 else TaskRunner)
    assert config.actor_rollout_ref.rollout.agent.default_agent_loop == "search_r1_agent"
    assert config.actor_rollout_ref.model.path == str(toy_dir)


def test_verl_main_runs_as_a_module_with_train_ppo_sh_arguments() -> None:
    """``python -m search_r1.rl.verl_main`` parses train_ppo.sh's command line; Hydra's ``--cfg job``
    prints the composed config without calling main (no Ray, no GPU)."""
    import subprocess

    from search_r1.rl.verl_config import RL_CONFIG_DIR, SEARCHPATH

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "search_r1.rl.verl_main",
            f"--config-path={RL_CONFIG_DIR}",
            "--config-name=verl_ppo",
            SEARCHPATH,
            "--cfg",
            "job",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "default_agent_loop: search_r1_agent" in out and "use_v1: true" in out
    script = (REPO_ROOT / "train_ppo.sh").read_text()
    assert 'exec "$PY" -m search_r1.rl.verl_main --config-path="$DIR" --config-name="$NAME"' in script
    assert f"'{SEARCHPATH}' \"$@\"" in script and "verl.trainer.main_ppo --" not in script
