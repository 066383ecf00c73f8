"""Export → LLaMA-Factory's own data pipeline: same token stream as the rollout, observations never trained."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from sft_helpers import QWEN25_CHAT_TEMPLATE, TitleRetriever, build_tokenizer
from transformers import AutoTokenizer

from search_r1.agent.engines.base import SamplingParams
from search_r1.agent.protocol import INFO_CLOSE, INFO_OPEN, ProtocolConfig
from search_r1.agent.rollout import run_episode
from search_r1.agent.trajectory import Trajectory
from search_r1.paths import CONFIG_DIR
from sft.config import SFTConfig
from sft.export import DATASET_FILE, export, reproducible, runs, to_sharegpt
from sft.generate import load_questions
from sft.oracle import OracleTeacher, load_oracle_questions
from sft.template import TEMPLATE_NAME, chat_format, register_template
from sft.train import lf_train_args

IGNORE = -100


@pytest.fixture(scope="module", params=["chatml", "qwen2.5"])
def tokenizer_dir(request, world, tmp_path_factory) -> Path:
    template = None if request.param == "chatml" else QWEN25_CHAT_TEMPLATE
    return build_tokenizer(world, tmp_path_factory.mktemp(request.param), template)


def oracle_trajectories(world, tokenizer, n_questions: int = 12) -> list[Trajectory]:
    """Oracle episodes through the shared rollout: one-hop, two-hop, and answered-without-search."""
    questions = load_questions(world.train, 0)
    picked = [q for q in questions if q.meta["hops"] == 2][: n_questions // 2]
    picked += [q for q in questions if q.meta["hops"] == 1][: n_questions // 2]
    oracle = OracleTeacher(tokenizer, load_oracle_questions(world.questions), p_search_known=0.5)
    retriever = TitleRetriever(world.corpus)
    protocol = ProtocolConfig.from_yaml(CONFIG_DIR / "agent" / "tiny.yaml")

    async def one(q, k):
        ids = tokenizer.apply_chat_template(
            q.messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        t = await run_episode(
            oracle, tokenizer, retriever, list(ids), protocol, SamplingParams(seed=k), q.uid, k
        )
        t.extra.update(messages=q.messages, golds=q.golds, meta=q.meta)
        return t

    async def all_():
        return await asyncio.gather(*(one(q, k) for q in picked for k in range(2)))

    return asyncio.run(all_())


def lf_dataset(cfg: SFTConfig, tokenizer_dir: Path):
    """Tokenised training examples exactly as LLaMA-Factory builds them for training."""
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    register_template(AutoTokenizer.from_pretrained(tokenizer_dir))
    args = lf_train_args(cfg) | {
        "cutoff_len": 4096,
        "preprocessing_num_workers": None,
        "overwrite_cache": True,
    }
    model_args, data_args, training_args, finetuning_args, _ = get_train_args(args)
    module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(module["tokenizer"], data_args)
    return get_dataset(template, model_args, data_args, training_args, stage="sft", **module)["train_dataset"]


def test_template_prompt_matches_the_models_chat_template(tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    fmt = chat_format(tok)
    assert fmt.after.endswith("<|im_start|>assistant\n")
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert fmt.before + "hi" + fmt.after == rendered
    has_system = "You are Qwen" in fmt.before
    assert has_system == (tok.chat_template == QWEN25_CHAT_TEMPLATE)


def test_qwen25_format_agrees_with_llamafactorys_builtin_qwen_template(world, tmp_path):
    """Our derived template and LLaMA-Factory's hand-written `qwen` one encode a prompt identically."""
    from llamafactory.data.template import TEMPLATES

    tok = AutoTokenizer.from_pretrained(build_tokenizer(world, tmp_path, QWEN25_CHAT_TEMPLATE))
    messages = [
        {"role": "user", "content": "Question: Who founded it?"},
        {"role": "assistant", "content": "x"},
    ]
    register_template(tok)
    ours = TEMPLATES[TEMPLATE_NAME].encode_oneturn(tok, messages)[0]
    builtin = TEMPLATES["qwen"].encode_oneturn(tok, messages)[0]
    assert ours == builtin


def test_export_splits_at_mask_boundaries(world, tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    trajs = oracle_trajectories(world, tok, 4)
    for t in trajs:
        ex = to_sharegpt(t, tok)
        roles = [m["from"] for m in ex["conversations"]]
        assert roles[0] == "human" and roles[-1] == "gpt"
        assert roles[1:] == ["gpt", "observation"] * t.num_searches + ["gpt"]
        for m in ex["conversations"]:
            if m["from"] == "observation":
                assert m["value"].strip().startswith(INFO_OPEN) and m["value"].strip().endswith(INFO_CLOSE)
            if m["from"] == "gpt":
                assert INFO_OPEN not in m["value"]
        assert reproducible(t, tok)
    assert runs([1, 2, 3, 4], [1, 1, 0, 1]) == [(1, [1, 2]), (0, [3]), (1, [4])]


def test_llamafactory_labels_train_policy_tokens_only_and_stream_equals_rollout(
    world, tokenizer_dir, tmp_path
):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    trajs = [t for t in oracle_trajectories(world, tok) if t.finish_reason == "answer"]
    assert any(t.num_searches == 2 for t in trajs) and any(t.num_searches == 0 for t in trajs)
    cfg = SFTConfig(model=str(tokenizer_dir), run_dir=str(tmp_path))
    export(trajs, tok, cfg.dataset_dir)
    assert len(json.loads((cfg.dataset_dir / DATASET_FILE).read_text())) == len(trajs)

    data = lf_dataset(cfg, tokenizer_dir)
    assert len(data) == len(trajs)
    for t, row in zip(trajs, data, strict=True):
        # the SFT token stream is the rollout's, token for token
        assert row["input_ids"] == t.prompt_ids + t.response_ids
        labels = row["labels"]
        n = len(t.prompt_ids)
        assert labels[:n] == [IGNORE] * n  # the prompt is never a target
        for i, (tok_id, m) in enumerate(zip(t.response_ids, t.response_mask, strict=True)):
            # every policy token is a target, every observation token is not
            assert labels[n + i] == (tok_id if m else IGNORE)
        # decode the targets: policy segments only, no retrieved text
        target_text = tok.decode([x for x in labels if x != IGNORE], skip_special_tokens=False)
        assert INFO_OPEN not in target_text and "Doc 1(Title:" not in target_text
        assert target_text.rstrip().endswith("</answer>")
        for turn in t.turns:
            assert turn.text in target_text
