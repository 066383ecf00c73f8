"""vLLM engine (optional: CUDA only, not installed on CPU machines).

Token ids in (``TokensPrompt``), token ids out — the ids vLLM sampled, with the stop string kept
(``include_stop_str_in_output``); vLLM checks stop strings after every token, so nothing follows
one. vLLM batches concurrent requests itself (continuous batching). A LoRA adapter is served
through ``LoRARequest`` without merging.
"""

from __future__ import annotations

import itertools
from typing import Any

from search_r1.agent.engines.base import GenerationResult, SamplingParams
from search_r1.agent.engines.registry import register_engine


def vllm_sampling_kwargs(s: SamplingParams) -> dict[str, Any]:
    """Our ``SamplingParams`` as ``vllm.SamplingParams`` keyword arguments (greedy: temperature 0)."""
    return {
        "max_tokens": s.max_new_tokens,
        "temperature": 0.0 if s.greedy else s.temperature,
        "top_p": 1.0 if s.greedy else s.top_p,
        "top_k": s.top_k if s.top_k > 0 and not s.greedy else -1,
        "repetition_penalty": 1.0,
        "stop": list(s.stop),
        "include_stop_str_in_output": True,
        "skip_special_tokens": False,
        "seed": s.seed,
        "logprobs": 0 if s.logprobs else None,  # 0 = just the sampled token's logprob
    }


def finish_reason(vllm_finish: str | None, stop_reason: Any) -> str:
    """vLLM reports a stop string as ``stop`` + its text, EOS as ``stop`` + None."""
    if vllm_finish == "length":
        return "length"
    return "stop" if isinstance(stop_reason, str) else "eos"


@register_engine("vllm")
class VLLMEngine:
    def __init__(self, engine: Any, tokenizer: Any, lora_request: Any = None):
        self.engine, self.tokenizer, self.lora_request = engine, tokenizer, lora_request
        self._ids = itertools.count()

    @classmethod
    def from_config(
        cls,
        model: str,
        adapter: str = "",
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.85,
        **kw: Any,
    ) -> VLLMEngine:
        try:
            from vllm import AsyncEngineArgs, AsyncLLMEngine
            from vllm.lora.request import LoRARequest
        except ImportError as exc:
            raise ImportError(
                f"engine=vllm needs vLLM (CUDA only; see docs/environments.md): {exc}. Use engine.name=hf instead."
            ) from None
        from transformers import AutoTokenizer

        args = AsyncEngineArgs(
            model=model,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_lora=bool(adapter),
            **kw,
        )
        lora = LoRARequest("adapter", 1, adapter) if adapter else None
        return cls(AsyncLLMEngine.from_engine_args(args), AutoTokenizer.from_pretrained(model), lora)

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> GenerationResult:
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.inputs import TokensPrompt

        final = None
        stream = self.engine.generate(
            TokensPrompt(prompt_token_ids=list(prompt_ids)),
            VLLMSamplingParams(**vllm_sampling_kwargs(sampling)),
            request_id=f"search-r1-{next(self._ids)}",
            lora_request=self.lora_request,
        )
        async for out in stream:
            final = out
        completion = final.outputs[0]
        ids = list(completion.token_ids)
        logprobs = None
        if sampling.logprobs and completion.logprobs is not None:
            logprobs = [step[tok].logprob for step, tok in zip(completion.logprobs, ids, strict=True)]
        reason = finish_reason(completion.finish_reason, completion.stop_reason)
        stop = completion.stop_reason if reason == "stop" else None
        return GenerationResult(ids, reason, logprobs, stop)
