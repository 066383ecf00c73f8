"""``python -m search_r1.rl.verl_rehearsal`` as the experiment runner calls it: a subprocess given
train_ppo.sh's Hydra overrides, against a real retriever server over the embedded world (BM25 index)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from search_r1.paths import REPO_ROOT

MODEL = REPO_ROOT / "data" / "models" / "tiny-sft"


class CountingRetriever:
    """The server's retriever, counting the queries it serves (the server's start-up warm-up excluded)."""

    def __init__(self, inner: Any):
        self.inner, self.queries = inner, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def retrieve(self, queries: list[str], k: int) -> Any:
        if queries != ["warm up"]:
            self.queries += len(queries)
        return self.inner.retrieve(queries, k)


@pytest.fixture(scope="module")
def served(world, tmp_path_factory) -> Iterator[tuple[str, CountingRetriever]]:
    from search_r1.retrieval.build import build_index
    from search_r1.retrieval.config import BuildConfig, ServerConfig
    from search_r1.retrieval.local import serve_in_thread
    from search_r1.retrieval.searchers import load_retriever

    index = build_index(
        BuildConfig(
            corpus=str(world.corpus), out_dir=str(tmp_path_factory.mktemp("idx") / "w"), backends=["bm25"]
        )
    )
    cfg = ServerConfig(
        index_dir=str(index), backend="bm25", port=0, cache_size=0
    )  # no cache: count every query
    retriever = CountingRetriever(load_retriever(cfg))
    with serve_in_thread(cfg, retriever) as url:
        yield url, retriever


def rehearse(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("SEARCH_R1_RETRIEVER_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "search_r1.rl.verl_rehearsal", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.skipif(not (MODEL / "config.json").is_file(), reason="data/models/tiny-sft is not shipped here")
def test_rehearsal_reports_a_consistent_step(world, served, tmp_path) -> None:
    url, retriever = served
    loops = tmp_path / "agent_loops.yaml"  # the tiny model's protocol, as a run on the world would set it
    loops.write_text(
        "- name: search_r1_agent\n  _target_: search_r1.rl.agent_loop.SearchAgentLoop\n"
        "  retriever_url: http://127.0.0.1:1\n  protocol: configs/agent/tiny.yaml\n"
    )
    out = tmp_path / "report.json"
    proc = rehearse(
        "--config",
        "configs/rl/verl_grpo.yaml",
        f"actor_rollout_ref.model.path={MODEL}",
        f"data.train_files={world.train}",
        f"data.val_files={world.dev}",
        "data.max_response_length=576",
        f"actor_rollout_ref.rollout.agent.agent_loop_config_path={loops}",
        "rehearsal.rows=2",
        f"rehearsal.out={out}",
        f"rehearsal.retriever_url={url}",  # replaces the dead URL of the yaml
    )
    assert proc.returncode == 0, (
        proc.stderr[-3000:],
        out.exists() and out.read_text()[:1500],
        retriever.queries,
    )
    rep = json.loads(out.read_text())
    assert "verl rehearsal of verl_grpo" in proc.stdout

    c = rep["config"]
    assert (c["model_path"], c["n_gpus_per_node"], c["adv_estimator"]) == (str(MODEL), 1, "grpo")
    assert (c["train_batch_size"], c["rollout_n"], c["retriever_url"]) == (64, 5, url)
    assert rep["rows"] == 2 and rep["episodes"] == 10

    # every search but an episode's last one reaches the server, and all of them succeed
    assert 0 < retriever.queries <= rep["searches"] <= retriever.queries + rep["episodes"]
    assert rep["retrieval_failures"] == 0 and rep["finish_reasons"]
    assert rep["response_mask"]["ok"] and rep["response_mask"]["observation_tokens"] > 0

    train, val = rep["step_metrics"]["train"], rep["step_metrics"]["val"]  # 5 samples per question: @5
    assert val["val-aux/world/searches/mean@5"] == pytest.approx(rep["searches_per_question"])
    assert rep["searches_per_question"] == pytest.approx(rep["searches"] / rep["episodes"])
    assert val["val-aux/world/retrieval_failures/mean@5"] == 0.0
    assert val["val-aux/world/has_answer/mean@5"] == pytest.approx(rep["answer_rate"])
    assert rep["mean_reward"] == pytest.approx(train["critic/score/mean"])
    assert rep["mean_reward"] == pytest.approx(val["val-core/world/reward/mean@5"])
    assert train["tool_call_counts/mean"] == pytest.approx(rep["searches_per_question"])


def test_bad_config_exits_2_with_one_line(tmp_path) -> None:
    proc = rehearse(
        "--config", "verl_ppo", "+actor_rollout_ref.actor.clip_ration=0.1", f"rehearsal.out={tmp_path}/r"
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("verl_rehearsal:")]
    assert len(lines) == 1 and "clip_ration" in lines[0]
    assert not (tmp_path / "r").exists()


def test_mask_check_judges_the_masks_not_what_the_policy_wrote() -> None:
    """A policy that writes ``<information>`` itself (an under-trained student does) has correct masks;
    an observation token marked as the policy's does not."""
    import numpy as np
    import torch
    from agent_fixtures import toy_tokenizer
    from verl.protocol import DataProto

    from search_r1.agent.protocol import wrap_observation
    from search_r1.rl.verl_rehearsal import mask_check

    tok = toy_tokenizer()
    policy = tok.encode(
        "<think> t </think><information> made up <search> q </search>", add_special_tokens=False
    )
    observation = tok.encode(wrap_observation("Doc 1(Title: T) text"), add_special_tokens=False)
    answer = tok.encode("<answer> Velmora </answer>", add_special_tokens=False)
    ids = policy + observation + answer
    mask = [1] * len(policy) + [0] * len(observation) + [1] * len(answer)

    def batch(response_mask: list[int]) -> DataProto:
        return DataProto.from_dict(
            tensors={
                "prompts": torch.zeros(1, 2, dtype=torch.long),
                "responses": torch.tensor([ids]),
                "response_mask": torch.tensor([response_mask]),
                "attention_mask": torch.ones(1, 2 + len(ids), dtype=torch.long),
            },
            non_tensors={
                "searches": np.array([1]),
                "finish_reason": np.array(["answer"], dtype=object),
                "observation_tokens": np.array([len(observation)]),
            },
        )

    assert mask_check(tok, batch(mask))["ok"]
    leaked = list(mask)
    leaked[len(policy)] = 1  # the first observation token trained on as if the policy wrote it
    assert mask_check(tok, batch(leaked))["bad_episodes"] == [0]
