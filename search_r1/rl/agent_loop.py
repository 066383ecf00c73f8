"""verl glue: our search rollout as a verl agent loop, with verl's server manager as the engine.

verl (``actor_rollout_ref.rollout.agent.agent_loop_config_path``) loads ``configs/rl/verl/agent_loops.yaml``,
which names :class:`SearchAgentLoop` and its settings (retriever URL, protocol preset); hydra
instantiates the class once per sample with those settings as keyword arguments. ``run`` builds the
prompt with verl's own tokenisation path, runs :func:`search_r1.agent.rollout.run_episode` — the same
episode code as the single-machine trainer and evaluation — and returns the token ids with *our*
observation mask as ``response_mask`` (1 = policy, 0 = retrieved text), so verl's losses skip the
observations. The reward is computed afterwards by verl's reward loop with our ``compute_score``.

The episode's counts (``searches``, ``retrieval_failures``, ``invalid_actions``) and whether its
response follows the tag grammar (``format_valid``) travel in ``extra_fields``; verl's reward loop hands them to ``compute_score`` as ``extra_info``, which returns
them next to the reward so verl logs them (docs/rl.md, "Step metrics").
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from uuid import uuid4

from verl.experimental.agent_loop.agent_loop import (
    AgentLoopBase,
    AgentLoopMetrics,
    AgentLoopOutput,
    _agent_loop_registry,
    register,
)

from search_r1.agent.engines.base import GenerationResult, SamplingParams
from search_r1.agent.protocol import ProtocolConfig
from search_r1.agent.rollout import run_episode
from search_r1.paths import REPO_ROOT
from search_r1.retrieval.client import AsyncRetrieverClient
from search_r1.rewards.format import is_valid_format

AGENT_NAME = "search_r1_agent"


class ServerManagerEngine:
    """Our ``Engine`` protocol over verl's ``LLMServerClient.generate`` (vLLM/SGLang servers).

    Stop strings are passed to the server (``stop`` + ``include_stop_str_in_output``), so generation
    ends at ``</search>``/``</answer>`` and the ids come back as generated, never re-encoded.
    """

    def __init__(self, server_manager: Any, tokenizer: Any, request_id: str):
        self.server_manager = server_manager
        self.tokenizer = tokenizer
        self.request_id = request_id  # one id per episode: sticky routing keeps its prefix cache warm
        eos = tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        # Weight versions the episode was generated with (the server reports them per call). verl's V1
        # trainer reads them from extra_fields for its staleness metrics and fails without them.
        self.min_global_steps: int | None = None
        self.max_global_steps: int | None = None

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> GenerationResult:
        params = {
            "temperature": max(sampling.temperature, 0.0),
            "top_p": sampling.top_p,
            "top_k": sampling.top_k if sampling.top_k > 0 else -1,
            "max_tokens": sampling.max_new_tokens,
            "stop": list(sampling.stop),
            "include_stop_str_in_output": True,
            "logprobs": sampling.logprobs,
        }
        out = await self.server_manager.generate(
            request_id=self.request_id, prompt_ids=prompt_ids, sampling_params=params
        )
        fields = out.extra_fields or {}
        if self.min_global_steps is None:
            self.min_global_steps = fields.get("min_global_steps")
        self.max_global_steps = fields.get("max_global_steps", self.max_global_steps)
        ids = list(out.token_ids)
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        found = [s for s in sampling.stop if s in text]
        if ids and ids[-1] in self.eos_ids:
            reason, stop = "eos", None
        elif found:
            reason, stop = "stop", max(found, key=text.rfind)
        else:
            reason, stop = "length", None
        return GenerationResult(ids, reason, list(out.log_probs) if out.log_probs else None, stop)


_clients: dict[tuple[str, float, str | None, int], AsyncRetrieverClient] = {}


def _client(url: str, timeout_s: float, token: str | None = None) -> AsyncRetrieverClient:
    """One pooled client per URL, timeout, token and event loop (agent loops are instantiated per
    sample). ``token=None`` lets the client read ``SEARCH_R1_RETRIEVER_TOKEN`` itself."""
    key = (url, timeout_s, token, id(asyncio.get_running_loop()))
    if key not in _clients:
        _clients[key] = AsyncRetrieverClient(url, timeout=timeout_s, token=token)
    return _clients[key]


def _resolve(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else REPO_ROOT / p


class SearchAgentLoop(AgentLoopBase):
    """Multi-turn search episode (DESIGN §4) as a verl agent loop.

    ``retriever_token`` is the retriever's bearer token; None (the default) leaves it to the client,
    which reads ``SEARCH_R1_RETRIEVER_TOKEN``, so a secret need not be written into the yaml.
    """

    def __init__(
        self,
        *args: Any,
        retriever_url: str = "http://127.0.0.1:8000",
        retriever_timeout_s: float = 10.0,
        retriever_token: str | None = None,
        protocol: str = "configs/agent/default.yaml",
        protocol_overrides: list[str] | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.retriever_url = retriever_url
        self.retriever_timeout_s = retriever_timeout_s
        self.retriever_token = retriever_token
        self.protocol = ProtocolConfig.from_yaml(_resolve(protocol), list(protocol_overrides or []))
        self.response_length = self.rollout_config.response_length
        # the reward's grammar, so format_valid here is compute_score's format_valid for the episode
        reward_kwargs = self.config.reward.custom_reward_function.get("reward_kwargs") or {}
        self.require_think = bool(reward_kwargs.get("require_think", True))

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        prompt_ids = await self.ct_build_initial_tokens(list(kwargs["raw_prompt"]))
        sampling = SamplingParams(
            temperature=float(sampling_params.get("temperature", 1.0)),
            top_p=float(sampling_params.get("top_p", 1.0)),
            top_k=max(int(sampling_params.get("top_k", -1)), 0),
            logprobs=bool(sampling_params.get("logprobs", False)),
        )
        engine = ServerManagerEngine(self.server_manager, self.tokenizer, uuid4().hex)
        retriever = _client(self.retriever_url, self.retriever_timeout_s, self.retriever_token)
        uid = str((kwargs.get("extra_info") or {}).get("uid", kwargs.get("index", "")))
        traj = await run_episode(
            engine, self.tokenizer, retriever, prompt_ids, self.protocol, sampling, uid=uid
        )
        n = self.response_length
        response = self.tokenizer.decode(traj.response_ids[:n], skip_special_tokens=True)  # as verl scores it
        return AgentLoopOutput(
            prompt_ids=traj.prompt_ids,
            response_ids=traj.response_ids[:n],
            response_mask=traj.response_mask[:n],
            response_logprobs=traj.response_logprobs[:n] if traj.response_logprobs is not None else None,
            num_turns=1 + 2 * len(traj.turns),
            metrics=AgentLoopMetrics(
                generate_sequences=traj.extra.get("generation_s", 0.0),
                tool_calls=traj.extra.get("retrieval_s", 0.0),
            ),
            extra_fields={
                "turn_scores": [],
                "tool_rewards": [],
                "searches": traj.num_searches,
                "invalid_actions": traj.num_invalid,
                "retrieval_failures": traj.num_retrieval_failures,
                "finish_reason": traj.finish_reason,
                "format_valid": is_valid_format(response, self.require_think),
                # what the environment appended (mask 0), within the kept response: checked by the rehearsal
                "observation_tokens": traj.response_mask[:n].count(0),
                # verl's name for tool calls per trajectory: its V0 trainer (trainer.use_v1=false) logs
                # tool_call_counts/{mean,min,max} every training step
                "tool_call_counts": traj.num_searches,
                "min_global_steps": engine.min_global_steps,
                "max_global_steps": engine.max_global_steps,
            },
        )


# verl imports this module lazily, when hydra first instantiates the yaml's `_target_`, i.e. *after* the
# worker registered the yaml entry with its settings. An unconditional @register would then replace that
# entry with a bare one, and every later episode would run with the defaults (retriever_url, protocol).
if AGENT_NAME not in _agent_loop_registry:
    register(AGENT_NAME)(SearchAgentLoop)
