"""An OpenAI-compatible server over the HF engine: a teacher endpoint on any machine, CPU included.

    python -m search_r1.agent.serve model=data/models/tiny-sft port=8001 [host=127.0.0.1]
        [served_model_name=NAME] [api_key_env=ENV_VAR]

Why our own: vLLM serves both endpoints but needs CUDA, and ``transformers serve`` serves only chat
completions, while the teacher's exact protocol (continuing a half-written assistant turn) needs
``/v1/completions``. This serves ``GET /v1/models``, ``POST /v1/completions`` and ``POST
/v1/chat/completions`` with vLLM's conventions where the teacher depends on them: the matched stop
string is removed from the text and named in ``stop_reason`` (None for an EOS); an unknown model is a
404; every error is ``{"error": {"message", "type", "code"}}``. Requests are batched dynamically by
``HFEngine``. A completion's prompt is tokenised verbatim (no BOS added: the client's text already
carries the chat template). Loopback only by default; with ``api_key_env`` every ``/v1`` request
must carry ``Authorization: Bearer <that env var's value>`` (``GET /health`` needs none).
"""

from __future__ import annotations

import os
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from search_r1.agent.engines.base import SamplingParams
from search_r1.config import die, entry_point, parse_config


@dataclass
class ServeConfig:
    model: str = field(default="", metadata={"help": "HF model folder to serve (required)"})
    host: str = field(default="127.0.0.1", metadata={"help": "bind address (loopback: this machine only)"})
    port: int = field(default=8001, metadata={"help": "port"})
    served_model_name: str = field(
        default="", metadata={"help": "name clients ask for ('' = model as given)"}
    )
    api_key_env: str = field(
        default="", metadata={"help": "env var holding the bearer token clients must send ('' = no auth)"}
    )
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})
    dtype: str = field(default="auto", metadata={"help": "auto | float32 | bfloat16 | float16"})
    max_batch_size: int = field(default=32, metadata={"help": "sequences per forward pass"})


class _Sampling(BaseModel):
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=-1, ge=-1)  # vLLM's extension; -1 or 0 = off
    seed: int | None = None
    stop: str | list[str] | None = None
    n: Literal[1] = 1


class CompletionRequest(_Sampling):
    prompt: str
    max_tokens: int | None = Field(default=16, ge=1)  # the OpenAI default


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)


def _error(status: int, message: str) -> JSONResponse:
    kind = {401: "authentication_error", 404: "not_found_error"}.get(status, "invalid_request_error")
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


def create_app(engine: Any, name: str, api_key: str = "") -> FastAPI:
    """The app serving ``engine`` (an ``HFEngine``) as model ``name``; ``api_key`` '' = no auth."""
    tokenizer = engine.tokenizer
    context = getattr(engine.model.config, "max_position_embeddings", None)

    app = FastAPI(title="search_r1 OpenAI-compatible server")

    @app.middleware("http")
    async def authorize(request: Request, call_next: Any) -> Any:  # before the body is even parsed
        given = request.headers.get("authorization", "")
        protected = request.url.path != "/health"  # as vLLM: liveness needs no key, /v1/* does
        if api_key and protected and not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            return _error(401, "invalid or missing API key (send Authorization: Bearer <key>)")
        return await call_next(request)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in exc.errors())
        return _error(400, problems)

    async def complete(prompt_ids: list[int], req: _Sampling) -> tuple[str, dict[str, Any], dict[str, int]]:
        """Generate for ``req``: the text, the choice's finish fields, and the token usage."""
        if req.model != name:
            raise HTTPException(404, f"The model `{req.model}` does not exist (serving `{name}`).")
        room = context - len(prompt_ids) if context else None
        max_tokens = req.max_tokens or room or 256
        if room is not None and max_tokens > room:
            raise HTTPException(
                400,
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({max_tokens}) exceed the context ({context})",
            )
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        sampling = SamplingParams(
            max_new_tokens=max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=max(req.top_k, 0),
            stop=stop,
            seed=req.seed,
        )
        res = await engine.generate(prompt_ids, sampling)
        text = tokenizer.decode(
            [t for t in res.token_ids if t not in engine.eos_ids], skip_special_tokens=False
        )
        if res.stop_string is not None and res.stop_string in text:
            text = text[: text.index(res.stop_string)]  # as vLLM; the last token may run past the stop
        finish = "length" if res.finish_reason == "length" else "stop"  # an EOS is a "stop" with no string
        n_prompt, n_out = len(prompt_ids), len(res.token_ids)
        usage = {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}
        return text, {"finish_reason": finish, "stop_reason": res.stop_string}, usage

    def reply(kind: str, choice: dict[str, Any], usage: dict[str, int]) -> dict[str, Any]:
        prefix = "chatcmpl" if kind == "chat.completion" else "cmpl"
        return {
            "id": f"{prefix}-{uuid.uuid4().hex}",
            "object": kind,
            "created": int(time.time()),
            "model": name,
            "choices": [{"index": 0, **choice}],
            "usage": usage,
        }

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "search_r1"}]}

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest) -> dict[str, Any]:
        text, finish, usage = await complete(tokenizer.encode(req.prompt, add_special_tokens=False), req)
        return reply("text_completion", {"text": text, "logprobs": None, **finish}, usage)

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest) -> dict[str, Any]:
        messages = [m.model_dump() for m in req.messages]
        try:
            ids = tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=False
            )
        except Exception as exc:  # no template, or one that rejects these roles
            raise HTTPException(400, f"cannot render the messages with the chat template: {exc}") from exc
        text, finish, usage = await complete(list(ids), req)
        return reply("chat.completion", {"message": {"role": "assistant", "content": text}, **finish}, usage)

    return app


@entry_point
def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(
        ServeConfig, "Serve an HF model over the OpenAI completions and chat APIs.", None, argv
    )
    if not cfg.model:
        die("model=<HF folder> is required", 2)
    api_key = ""
    if cfg.api_key_env:
        api_key = os.environ.get(cfg.api_key_env, "")
        if not api_key:
            die(f"api_key_env={cfg.api_key_env} but that environment variable is empty", 2)
    import uvicorn

    from search_r1.agent.engines.hf import HFEngine

    engine = HFEngine.from_config(
        cfg.model, device=cfg.device, dtype=cfg.dtype, max_batch_size=cfg.max_batch_size
    )
    name = cfg.served_model_name or cfg.model
    print(f"[serve] {name} at http://{cfg.host}:{cfg.port}/v1", flush=True)
    uvicorn.run(create_app(engine, name, api_key), host=cfg.host, port=cfg.port, log_level="warning")


if __name__ == "__main__":
    main()
