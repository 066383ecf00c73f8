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

from agent_fixtures import QUESTION, TOY_CFG, MemoryRetriever, toy_model, toy_tokenizer  # noqa: E402

from search_r1.agent.engines.hf import HFEngine  # noqa: E402
from search_r1.agent.protocol import INFO_OPEN, STOP_STRINGS  # noqa: E402
from search_r1.paths import REPO_ROOT  # noqa: E402
from search_r1.rl.verl_config import check, compose_config  # noqa: E402
from search_r1.rl.verl_rehearsal import InProcessServerManager  # noqa: E402

CONFIGS = ("verl_ppo", "verl_grpo", "qwen2.5-3b_nq_ppo")


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory) -> Path:
    """A toy Qwen2 that greedily searches once, reads, then answers (tests/agent_fixtures.py)."""
    tok = toy_tokenizer()
    out = tmp_path_factory.mktemp("toy")
    toy_model(tok).save_pretrained(out)
    tok.save_pretrained(out)
    return out


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

    loops = tmp_path / "agent_loops.yaml"
    overrides = [
        f"{k}={getattr(TOY_CFG, k)}"
        for k in ("max_turns", "topk", "max_obs_tokens", "max_turn_tokens", "max_response_tokens")
    ]
    loops.write_text(
        f"- name: search_r1_agent\n  _target_: search_r1.rl.agent_loop.SearchAgentLoop\n"
        f"  retriever_url: http://127.0.0.1:1\n  protocol: configs/agent/tiny.yaml\n"
        f"  protocol_overrides: {overrides}\n"
    )
    retriever = MemoryRetriever()
    monkeypatch.setattr(agent_loop, "_client", lambda *args: retriever)
    cfg = compose_config(
        "verl_ppo",
        [
            f"actor_rollout_ref.model.path={toy_dir}",
            f"actor_rollout_ref.rollout.agent.agent_loop_config_path={loops}",
            "data.max_prompt_length=128",
            "data.max_response_length=512",
            "actor_rollout_ref.rollout.temperature=0",
        ],
    )
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

    loops = tmp_path / "agent_loops.yaml"
    overrides = [f"max_turns={TOY_CFG.max_turns}", f"topk={TOY_CFG.topk}", "max_response_tokens=400"]
    loops.write_text(
        f"- name: search_r1_agent\n  _target_: search_r1.rl.agent_loop.SearchAgentLoop\n"
        f"  retriever_url: http://127.0.0.1:1\n  protocol: configs/agent/tiny.yaml\n"
        f"  protocol_overrides: {overrides}\n"
    )
    monkeypatch.setattr(agent_loop, "_client", lambda *args: retriever)
    monkeypatch.chdir(REPO_ROOT)  # verl resolves custom_reward_function.path from the working directory
    cfg = compose_config(
        name,
        [
            f"actor_rollout_ref.model.path={toy_dir}",
            f"actor_rollout_ref.rollout.agent.agent_loop_config_path={loops}",
            "data.max_prompt_length=128",
            "data.max_response_length=512",
            "actor_rollout_ref.rollout.temperature=0",
            "actor_rollout_ref.rollout.n=1",
        ],
    )
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
