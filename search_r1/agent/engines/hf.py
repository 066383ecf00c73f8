"""Hugging Face transformers engine (CPU or GPU) with dynamic batching.

Concurrent ``generate`` calls (one per live trajectory) are queued; a worker task takes up to
``max_batch_size`` of them with the same sampling settings and runs one batched, left-padded
``model.generate`` in a thread, so the event loop keeps serving retrieval meanwhile. Rows stop
individually — at a stop string (HF's ``StopStringCriteria``, token-boundary aware), at EOS, or at
their own ``max_new_tokens`` — and each row's ids are returned up to and including the token that
finished it: nothing after a stop string, no decode → re-encode.

Greedy means greedy: every sampling field is set explicitly, because ``generate`` otherwise fills
unset fields from the checkpoint's ``generation_config.json`` (Qwen2.5-Instruct ships
``repetition_penalty=1.05``, ``top_k=20``, …). A seed seeds torch's global RNG once, at the first
batch that carries it; later batches continue that stream, so a prompt sampled again in another
batch still gets a different sample. Sampled outputs depend on batch composition. Requests batch
together only when their sampling settings (seed included, ``max_new_tokens`` excepted) match.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
    StopStringCriteria,
)

from search_r1.agent.engines.base import GenerationResult, SamplingParams
from search_r1.agent.engines.registry import register_engine


@dataclass
class _Request:
    prompt_ids: list[int]
    sampling: SamplingParams
    future: asyncio.Future


@dataclass
class EngineStats:
    """Counters for benchmarks: ``slot_steps - tokens`` is decode work spent on padding rows."""

    batches: int = 0
    sequences: int = 0
    tokens: int = 0  # ids returned to callers
    slot_steps: int = 0  # batch rows x decode steps actually run


class _RowStops(StoppingCriteria):
    """Per-row stop: a stop string or the row's own token limit; records why and when."""

    def __init__(self, stop_strings: StopStringCriteria | None, prompt_len: int, limits: list[int]):
        self.stop_strings = stop_strings
        self.prompt_len = prompt_len
        self.limits = torch.tensor(limits)
        self.ended_at: list[int | None] = [None] * len(limits)  # tokens generated when the row ended
        self.by_stop = [False] * len(limits)

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        n = input_ids.shape[1] - self.prompt_len
        hit = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if self.stop_strings is not None:
            hit = self.stop_strings(input_ids, scores)
        done = hit | (n >= self.limits.to(input_ids.device))
        for i in torch.nonzero(done).flatten().tolist():
            if self.ended_at[i] is None:
                self.ended_at[i], self.by_stop[i] = n, bool(hit[i])
        return done


@register_engine("hf")
class HFEngine:
    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        max_batch_size: int = 32,
        batch_wait_s: float = 0.02,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids)
        self.stats = EngineStats()
        self._stop_criteria: dict[tuple[str, ...], StopStringCriteria] = {}
        self._seeded: set[int] = set()
        self._queue: asyncio.Queue[_Request] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_config(
        cls,
        model: str | Path,
        adapter: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        **kwargs: Any,
    ) -> HFEngine:
        """Load an HF folder, optionally merging a LoRA adapter into it."""
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
        lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype).to(device)
        if adapter:
            from peft import PeftModel

            lm = PeftModel.from_pretrained(lm, adapter).merge_and_unload()
        has_own_tokenizer = adapter and (Path(adapter) / "tokenizer_config.json").exists()
        tokenizer = AutoTokenizer.from_pretrained(adapter if has_own_tokenizer else model)
        return cls(lm, tokenizer, **kwargs)

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> GenerationResult:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new event loop (e.g. a second asyncio.run): new queue and worker
            self._loop, self._queue = loop, asyncio.Queue()
            loop.create_task(self._worker())
        future = loop.create_future()
        await self._queue.put(_Request(list(prompt_ids), sampling, future))
        return await future

    async def _worker(self) -> None:
        queue = self._queue
        pending: list[_Request] = []
        while True:
            if not pending:
                pending.append(await queue.get())
            if len(pending) < self.max_batch_size:
                await asyncio.sleep(self.batch_wait_s)  # let concurrent callers join this batch
            while not queue.empty():
                pending.append(queue.get_nowait())
            key = _batch_key(pending[0].sampling)
            batch = [r for r in pending if _batch_key(r.sampling) == key][: self.max_batch_size]
            pending = [r for r in pending if all(r is not b for b in batch)]
            try:
                results = await asyncio.to_thread(self._generate_batch, batch)
            except Exception as exc:  # surface the failure to every caller of this batch
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(exc)
                continue
            for r, res in zip(batch, results, strict=True):
                if not r.future.done():
                    r.future.set_result(res)

    def _stop_strings(self, stop: tuple[str, ...]) -> StopStringCriteria | None:
        if not stop:
            return None
        if stop not in self._stop_criteria:
            self._stop_criteria[stop] = StopStringCriteria(self.tokenizer, list(stop))
        return self._stop_criteria[stop]

    @torch.no_grad()
    def _generate_batch(self, batch: list[_Request]) -> list[GenerationResult]:
        s = batch[0].sampling
        width = max(len(r.prompt_ids) for r in batch)
        device = self.model.device
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for i, r in enumerate(batch):  # left padding: every row's last prompt token is aligned
            input_ids[i, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
            attention[i, width - len(r.prompt_ids) :] = 1
        limits = [r.sampling.max_new_tokens for r in batch]
        stops = _RowStops(self._stop_strings(tuple(s.stop)), width, limits)
        if s.seed is not None and s.seed not in self._seeded:
            torch.manual_seed(s.seed)  # once: later batches continue the stream, so repeats still differ
            self._seeded.add(s.seed)
        out = self.model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            generation_config=_generation_config(s, max(limits), sorted(self.eos_ids), self.pad_id),
            stopping_criteria=StoppingCriteriaList([stops]),
        )
        sequences = out.sequences[:, width:].tolist()
        results = []
        for i, row in enumerate(sequences):
            end = stops.ended_at[i] if stops.ended_at[i] is not None else len(row)
            ids = row[:end]
            eos_at = next((j for j, t in enumerate(ids) if t in self.eos_ids), None)
            if eos_at is not None:
                ids, reason = ids[: eos_at + 1], "eos"
            elif stops.by_stop[i]:
                reason = "stop"
            else:
                reason = "length"
            logprobs = None
            if s.logprobs:
                logprobs = [
                    torch.log_softmax(out.scores[t][i].float(), -1)[tok].item() for t, tok in enumerate(ids)
                ]
            stop_string = None
            if reason == "stop":
                text = self.tokenizer.decode(ids)  # the last token may run past the stop string
                stop_string = max(s.stop, key=text.rfind)
            results.append(GenerationResult(ids, reason, logprobs, stop_string))
        self.stats.batches += 1
        self.stats.sequences += len(batch)
        self.stats.tokens += sum(len(r.token_ids) for r in results)
        self.stats.slot_steps += len(batch) * len(sequences[0])
        return results


def _batch_key(s: SamplingParams) -> tuple:
    """Requests that can share one ``generate`` call (max_new_tokens is handled per row)."""
    return (s.greedy, s.temperature, s.top_p, s.top_k, tuple(s.stop), s.seed, s.logprobs)


def _generation_config(s: SamplingParams, max_new_tokens: int, eos: list[int], pad: int) -> GenerationConfig:
    """Every field that changes the distribution is set, so none leaks from the checkpoint.

    Greedy leaves the sampling warpers unset: ``do_sample=False`` skips them all, while logits
    processors such as the repetition penalty would still apply, so those are always pinned.
    """
    sampling = (
        {}
        if s.greedy
        else dict(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, min_p=0.0, typical_p=1.0)
    )
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=not s.greedy,
        num_beams=1,
        **sampling,
        epsilon_cutoff=0.0,
        eta_cutoff=0.0,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        encoder_repetition_penalty=1.0,
        eos_token_id=eos,
        pad_token_id=pad,
        return_dict_in_generate=True,
        output_scores=s.logprobs,
    )
