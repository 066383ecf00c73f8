"""Rollout and HF engine: the token stream, stop strings, greedy decoding, faults and budgets."""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from agent_fixtures import TOY_CFG, MemoryRetriever, prompt_ids, tiny_qwen2, toy_model, toy_tokenizer  # noqa: E402

from search_r1.agent.engines.base import GenerationResult, SamplingParams  # noqa: E402
from search_r1.agent.engines.hf import HFEngine  # noqa: E402
from search_r1.agent.protocol import STOP_STRINGS, ProtocolConfig  # noqa: E402
from search_r1.agent.rollout import rollout, run_episode  # noqa: E402
from search_r1.retrieval.client import RetrieverTimeout, RetrieverUnavailable  # noqa: E402

GREEDY = SamplingParams(temperature=0.0)


@pytest.fixture(scope="module")
def toy():
    tok = toy_tokenizer()
    return toy_model(tok), tok


class RecordingEngine:
    """Wraps an engine and keeps every result it returned, in call order per prompt prefix."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    async def generate(self, prompt_ids, sampling):
        res = await self.inner.generate(prompt_ids, sampling)
        self.calls.append((list(prompt_ids), res))
        return res


def _check_token_stream(traj, calls, tok) -> None:
    """response = generated ids + observation ids, exactly; mask marks exactly the observations."""
    by_context = {tuple(p): res for p, res in calls}
    ids, mask = [], []
    for turn in traj.turns:
        res = by_context[tuple(traj.prompt_ids + ids)]  # the call that produced this turn
        ids += res.token_ids
        mask += [1] * len(res.token_ids)
        if turn.observation:
            obs = tok.encode(turn.observation, add_special_tokens=False)  # tokenised once, reproducible
            ids += obs
            mask += [0] * len(obs)
        for cut in range(1, len(res.token_ids)):  # nothing follows a stop string within a turn
            prefix = tok.decode(res.token_ids[:cut])
            assert not any(s in prefix for s in STOP_STRINGS), (prefix, res)
        if res.finish_reason == "stop":
            assert tok.decode(res.token_ids).endswith(res.stop_string)
    assert traj.response_ids == ids
    assert traj.response_mask == mask


def test_token_stream_greedy_search_then_answer(toy) -> None:
    model, tok = toy
    engine = RecordingEngine(HFEngine(model, tok))
    retriever = MemoryRetriever()
    batch = asyncio.run(rollout(engine, tok, retriever, [prompt_ids(tok)] * 3, TOY_CFG, GREEDY))
    for traj in batch.trajectories:
        assert [t.action for t in traj.turns] == ["search", "answer"]
        assert traj.turns[0].query == "capital of Zorland" and traj.turns[0].doc_ids
        assert traj.final_answer == "Velmora" and traj.finish_reason == "answer"
        assert traj.turns[0].observation.startswith("\n\n<information>Doc 1(Title: ")
        _check_token_stream(traj, engine.calls, tok)
        assert 0 in traj.response_mask and len(traj.response_ids) <= TOY_CFG.max_response_tokens
    s = batch.stats
    assert s.tokens_generated == s.tokens_kept > 0 and s.turns_with_text_after_action == 0
    assert s.searches == 1.0 and s.valid_action_ratio == 1.0 and s.finish_reasons == {"answer": 3}
    assert retriever.calls == 3


def test_token_stream_sampled_random_model(toy) -> None:
    """An untrained model biased towards the tags writes tag soup: stops, invalid turns, lengths."""
    _, tok = toy
    torch.manual_seed(1)
    model = tiny_qwen2(tok, hidden=32, layers=1, heads=2)
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():  # a bias towards the tags makes stops, invalid turns and observations common
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        for tag in ("<search>", "</search>", "<answer>", "</answer>"):
            head.bias[tok.convert_tokens_to_ids(tag)] = 1.5
    model.lm_head = head
    engine = RecordingEngine(HFEngine(model, tok, max_batch_size=8))
    pcfg = ProtocolConfig(max_turns=3, topk=1, max_obs_tokens=16, max_turn_tokens=30, max_response_tokens=200)
    sampling = SamplingParams(temperature=1.0, seed=0, logprobs=True)
    prompts = [prompt_ids(tok, f"Question number {i}?") for i in range(8)]  # distinct: calls map to episodes
    batch = asyncio.run(rollout(engine, tok, MemoryRetriever(), prompts, pcfg, sampling))
    for traj in batch.trajectories:
        _check_token_stream(traj, engine.calls, tok)
        assert len(traj.response_logprobs) == len(traj.response_ids)
        assert len(traj.response_ids) <= pcfg.max_response_tokens
        assert traj.finish_reason in ("answer", "eos", "length", "max_turns")
    assert sum(len(r.token_ids) for _, r in engine.calls) == batch.stats.tokens_kept
    finished = {r.finish_reason for _, r in engine.calls}
    assert {"stop", "length"} <= finished, finished
    assert any(t.observation for tr in batch.trajectories for t in tr.turns), "no observation exercised"


def test_greedy_ignores_checkpoint_sampling_defaults(toy) -> None:
    """Greedy = argmax each step, even when generation_config.json says sample / penalise repeats."""
    model, tok = toy
    model.generation_config.do_sample = True
    model.generation_config.top_k = 2
    model.generation_config.temperature = 0.3
    model.generation_config.repetition_penalty = 5.0
    try:
        prompt = prompt_ids(tok)
        res = asyncio.run(
            HFEngine(model, tok).generate(prompt, SamplingParams(temperature=0, max_new_tokens=12))
        )
        ids = list(prompt)
        with torch.no_grad():
            for _ in range(len(res.token_ids)):
                ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
        assert res.token_ids == ids[len(prompt) :]
    finally:
        model.generation_config.do_sample = False
        model.generation_config.repetition_penalty = 1.0


def test_batched_rows_match_single_rows(toy) -> None:
    """Left-padded dynamic batches give each row what it would get alone; per-row token limits hold."""
    model, tok = toy
    prompts = [prompt_ids(tok), prompt_ids(tok, "Where was Quintar founded?"), prompt_ids(tok, "Zorland?")]
    limits = [40, 5, 17]

    async def together():
        engine = HFEngine(model, tok)
        jobs = [
            engine.generate(p, SamplingParams(temperature=0, max_new_tokens=k))
            for p, k in zip(prompts, limits, strict=True)
        ]
        return await asyncio.gather(*jobs), engine.stats

    batched, stats = asyncio.run(together())
    assert stats.batches == 1 and stats.sequences == 3
    for p, k, got in zip(prompts, limits, batched, strict=True):
        alone = asyncio.run(HFEngine(model, tok).generate(p, SamplingParams(temperature=0, max_new_tokens=k)))
        assert got.token_ids == alone.token_ids and got.finish_reason == alone.finish_reason
        assert len(got.token_ids) <= k
    assert batched[1].finish_reason == "length" and len(batched[1].token_ids) == 5


# --- rollout logic with a scripted engine (no model) ---------------------------------------------


@dataclass
class ScriptedEngine:
    """Returns the next scripted turn text (tokenised) per call, like an engine honouring stops."""

    tok: object
    script: list[tuple[str, str]]  # (text, finish_reason)

    async def generate(self, prompt_ids, sampling):
        text, reason = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        ids = self.tok.encode(text, add_special_tokens=False)[: sampling.max_new_tokens]
        return GenerationResult(ids, reason, None, "</search>" if reason == "stop" else None)


def _episode(tok, script, retriever=None, cfg=TOY_CFG):
    engine = ScriptedEngine(tok, list(script))
    return asyncio.run(run_episode(engine, tok, retriever or MemoryRetriever(), [1, 2, 3], cfg, GREEDY, "q"))


@pytest.mark.parametrize(
    "error", [RetrieverTimeout("slow"), RetrieverUnavailable("down"), ConnectionError("x")]
)
def test_retrieval_failure_becomes_an_observation(toy, error) -> None:
    _, tok = toy
    retriever = MemoryRetriever(fail_with=error)
    traj = _episode(tok, [("<search>q</search>", "stop"), ("<answer>a</answer>", "stop")], retriever)
    assert traj.finish_reason == "answer" and traj.final_answer == "a"
    assert traj.turns[0].retrieval_failed and traj.turns[0].error == type(error).__name__
    assert "search failed" in traj.turns[0].observation and type(error).__name__ in traj.turns[0].observation
    assert traj.num_retrieval_failures == 1


def test_model_that_never_stops_hits_the_length_budget(toy) -> None:
    _, tok = toy
    cfg = ProtocolConfig(max_turn_tokens=20, max_response_tokens=50)
    traj = _episode(tok, [("la " * 100, "length")], cfg=cfg)
    assert traj.finish_reason == "length" and traj.turns[-1].action == "length"
    assert len(traj.response_ids) == 20


def test_turn_budget_and_forced_final_answer(toy) -> None:
    _, tok = toy
    retriever = MemoryRetriever()
    cfg = ProtocolConfig(max_turns=2, max_response_tokens=2000)
    traj = _episode(tok, [("<search>capital</search>", "stop")], retriever, cfg)
    assert [t.action for t in traj.turns] == ["search"] * 3 and traj.finish_reason == "max_turns"
    assert retriever.calls == 2  # the final turn's search gets no results
    assert cfg.final_turn_message in traj.turns[1].observation
    assert cfg.final_turn_message not in traj.turns[0].observation and traj.turns[2].observation == ""


def test_invalid_action_gets_the_corrective_message(toy) -> None:
    _, tok = toy
    traj = _episode(tok, [("<search></search>", "stop"), ("<answer>x</answer>", "stop")])
    assert [t.action for t in traj.turns] == ["invalid", "answer"]
    assert TOY_CFG.invalid_message in traj.turns[0].observation
    assert traj.num_invalid == 1


def test_eos_without_action_ends_the_episode(toy) -> None:
    _, tok = toy
    traj = _episode(tok, [("I do not know", "eos")])
    assert traj.finish_reason == "eos" and traj.final_answer is None and traj.turns[0].action == "invalid"


def test_observation_that_does_not_fit_ends_with_length(toy) -> None:
    _, tok = toy
    cfg = ProtocolConfig(max_obs_tokens=200, max_response_tokens=40)
    traj = _episode(tok, [("<search>capital of Zorland</search>", "stop")], cfg=cfg)
    assert traj.finish_reason == "length" and 0 not in traj.response_mask
    assert len(traj.response_ids) <= 40


# --- OpenAI-compatible and vLLM engines (no server / no vLLM needed) -----------------------------


def _openai_engine(tok, reply: dict, seen: list):
    import httpx

    from search_r1.agent.engines.openai import OpenAIEngine

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, json={"choices": [reply]})

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return OpenAIEngine("http://teacher/v1", "big-model", tok, client=client)


@pytest.mark.parametrize(
    ("reply", "text", "reason", "stop"),
    [
        (
            {"text": "<think>a</think><search> q", "finish_reason": "stop", "stop_reason": "</search>"},
            "<think>a</think><search> q</search>",
            "stop",
            "</search>",
        ),
        (
            {"text": "<answer> x", "finish_reason": "stop"},
            "<answer> x</answer>",
            "stop",
            "</answer>",
        ),  # inferred
        ({"text": "no tags", "finish_reason": "stop", "stop_reason": None}, "no tags", "eos", None),
        ({"text": "<answer> x", "finish_reason": "length"}, "<answer> x", "length", None),
    ],
)
def test_openai_engine_reattaches_stop_strings(toy, reply, text, reason, stop) -> None:
    _, tok = toy
    seen: list = []
    engine = _openai_engine(tok, reply, seen)
    res = asyncio.run(
        engine.generate(
            prompt_ids(tok), SamplingParams(temperature=0, max_new_tokens=9, stop=list(STOP_STRINGS))
        )
    )
    expected = tok.encode(text, add_special_tokens=False) + ([tok.eos_token_id] if reason == "eos" else [])
    assert res.token_ids == expected and res.finish_reason == reason and res.stop_string == stop
    body = seen[0]
    assert body["temperature"] == 0.0 and body["top_p"] == 1.0 and "top_k" not in body  # greedy is greedy
    assert body["stop"] == list(STOP_STRINGS) and body["max_tokens"] == 9 and body["model"] == "big-model"
    assert body["prompt"] == tok.decode(prompt_ids(tok))


def test_openai_engine_errors(toy) -> None:
    import httpx

    from search_r1.agent.engines.openai import EngineHTTPError, OpenAIEngine

    _, tok = toy
    calls = []

    def handler(request):
        calls.append(1)
        return httpx.Response(503 if len(calls) < 3 else 400, text="nope")

    engine = OpenAIEngine(
        "http://t/v1",
        "m",
        tok,
        max_retries=3,
        client=httpx.AsyncClient(transport=httpx.MockTransport(handler)),
    )
    with pytest.raises(EngineHTTPError, match="HTTP 400"):
        asyncio.run(engine.generate([1, 2], SamplingParams(temperature=0)))
    assert len(calls) == 3  # two retried 503s, then a 400 that is not retried


def test_vllm_sampling_translation_and_missing_vllm() -> None:
    from search_r1.agent.engines.registry import make_engine
    from search_r1.agent.engines.vllm import finish_reason, vllm_sampling_kwargs

    greedy = vllm_sampling_kwargs(SamplingParams(temperature=0, top_k=5, top_p=0.5, stop=["</search>"]))
    assert greedy["temperature"] == 0.0 and greedy["top_k"] == -1 and greedy["top_p"] == 1.0
    assert greedy["include_stop_str_in_output"] and greedy["repetition_penalty"] == 1.0
    sampled = vllm_sampling_kwargs(SamplingParams(temperature=0.7, top_k=5, logprobs=True))
    assert sampled["top_k"] == 5 and sampled["logprobs"] == 0
    assert (
        finish_reason("stop", "</answer>"),
        finish_reason("stop", None),
        finish_reason("length", None),
    ) == ("stop", "eos", "length")
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="engine=vllm needs vLLM"):
            make_engine("vllm", model="x")
    with pytest.raises(ValueError, match="unknown engine"):
        make_engine("nope")


def test_dead_retriever_server_with_the_real_client(toy, free_port) -> None:
    """The real client against a closed port: a typed error, an observation, and the episode goes on."""
    from search_r1.retrieval.client import AsyncRetrieverClient

    _, tok = toy

    async def go():
        async with AsyncRetrieverClient(
            f"http://127.0.0.1:{free_port}", timeout=0.5, max_retries=1
        ) as client:
            engine = ScriptedEngine(tok, [("<search>q</search>", "stop"), ("<answer>a</answer>", "stop")])
            return await run_episode(engine, tok, client, [1, 2], TOY_CFG, GREEDY, "q")

    traj = asyncio.run(go())
    assert traj.turns[0].retrieval_failed and traj.turns[0].error == "RetrieverUnavailable"
    assert traj.finish_reason == "answer"


@pytest.mark.slow
def test_token_stream_on_the_tiny_base_model(tiny_model) -> None:
    """The world's tiny base model, sampled: whatever it writes, the stream and masks are exact."""
    engine = HFEngine.from_config(tiny_model, device="cpu", max_batch_size=8)
    tok = engine.tokenizer
    recording = RecordingEngine(engine)
    prompts = [prompt_ids(tok, f"What is the capital of country number {i}?") for i in range(8)]
    cfg = ProtocolConfig(max_turns=2, topk=2, max_obs_tokens=64, max_turn_tokens=48, max_response_tokens=300)
    sampling = SamplingParams(temperature=1.0, seed=0)
    batch = asyncio.run(rollout(recording, tok, MemoryRetriever(), prompts, cfg, sampling))
    for traj in batch.trajectories:
        _check_token_stream(traj, recording.calls, tok)
    assert batch.stats.tokens_generated == batch.stats.tokens_kept


def test_seeded_sampling_differs_across_batches(toy) -> None:
    """GRPO needs n different samples of one prompt even when they land in different batches."""
    _, tok = toy
    torch.manual_seed(0)
    engine = HFEngine(tiny_qwen2(tok, hidden=32, layers=1, heads=2), tok)
    s = SamplingParams(temperature=1.0, seed=7, max_new_tokens=12)
    first = asyncio.run(engine.generate(prompt_ids(tok), s)).token_ids
    second = asyncio.run(engine.generate(prompt_ids(tok), s)).token_ids  # a separate batch
    assert first != second
    again = HFEngine(engine.model, tok)  # a fresh engine with the same seed reproduces the first sample
    assert asyncio.run(again.generate(prompt_ids(tok), s)).token_ids == first
