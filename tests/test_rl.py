"""The single-machine trainer: masking, checkpoint/resume, retriever faults, learning on the embedded world."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from agent_fixtures import TOY_CFG, MemoryRetriever, prompt_ids, toy_model, toy_tokenizer  # noqa: E402
from sft_helpers import TitleRetriever  # noqa: E402

from search_r1.agent.engines.base import SamplingParams  # noqa: E402
from search_r1.agent.engines.hf import HFEngine  # noqa: E402
from search_r1.agent.rollout import rollout  # noqa: E402
from search_r1.config import load_config  # noqa: E402
from search_r1.paths import CONFIG_DIR, REPO_ROOT, RUNS_DIR  # noqa: E402
from search_r1.retrieval.client import AsyncRetrieverClient  # noqa: E402
from search_r1.rl.algos import compute_advantages, policy_loss_config  # noqa: E402
from search_r1.rl.batch import collate, place_outcome_reward  # noqa: E402
from search_r1.rl.config import PPOConfig  # noqa: E402
from search_r1.rl.trainer import actor_loss, batch_indices, train  # noqa: E402

PRESET = CONFIG_DIR / "rl" / "tiny_ppo.yaml"
SFT_MERGED = RUNS_DIR / "sft" / "tiny" / "merged"  # what train_sft.sh writes for the tiny preset


@pytest.fixture(scope="session")
def base_model(request) -> Path:
    """The tiny base model (RL_TEST_BASE_MODEL points the RL tests at another HF folder)."""
    override = os.environ.get("RL_TEST_BASE_MODEL")
    return Path(override) if override else request.getfixturevalue("tiny_model")


@pytest.fixture(scope="session")
def bm25_index(world, tmp_path_factory) -> Path:
    from search_r1.retrieval.build import build_index
    from search_r1.retrieval.config import BuildConfig

    out = tmp_path_factory.mktemp("rl_index") / "world"
    return build_index(BuildConfig(corpus=str(world.corpus), out_dir=str(out), backends=["bm25"]))


def make_cfg(model: Path, run_root: Path, *overrides: str) -> PPOConfig:
    """The tiny preset shrunk to seconds per step."""
    return load_config(
        PPOConfig,
        PRESET,
        [
            f"actor_rollout_ref.model.path={model}",
            f"trainer.default_local_dir={run_root}",
            "data.train_batch_size=2",
            "actor_rollout_ref.rollout.n=2",
            "actor_rollout_ref.actor.ppo_mini_batch_size=1",
            "trainer.total_training_steps=3",
            "trainer.save_freq=1",
            "trainer.save_merged=false",
            *overrides,
        ],
    )


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ---- masking ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_batch():
    """Trajectories with real observations: the toy model searches, reads, then answers."""
    tok = toy_tokenizer()
    model = toy_model(tok)
    sampling = SamplingParams(temperature=0.0)
    out = asyncio.run(
        rollout(
            HFEngine(model, tok),
            tok,
            MemoryRetriever(),
            [prompt_ids(tok)] * 2,
            TOY_CFG,
            sampling,
            uids=["q0", "q1"],
            n=2,
        )
    )
    return tok, out.trajectories


def test_observation_tokens_get_zero_loss_weight(toy_batch) -> None:
    tok, trajs = toy_batch
    assert all(tr.num_searches == 1 and 0 in tr.response_mask for tr in trajs)
    b = collate(trajs, tok.pad_token_id)
    obs = torch.zeros_like(b.response_mask, dtype=torch.bool)
    for i, tr in enumerate(trajs):  # observation positions, straight from the trajectory
        obs[i, : len(tr.response_mask)] = torch.tensor(tr.response_mask) == 0
    assert obs.any() and torch.equal(b.response_mask[obs], torch.zeros(int(obs.sum())))

    scores = torch.tensor([1.0, 0.0, 1.0, 0.0])
    rewards = place_outcome_reward(scores, b.response_mask)
    last_policy = [max(j for j, m in enumerate(tr.response_mask) if m) for tr in trajs]
    assert [rewards[i, j].item() for i, j in enumerate(last_policy)] == scores.tolist()

    cfg = load_config(PPOConfig, PRESET, ["actor_rollout_ref.actor.entropy_coeff=0.01"])
    a = cfg.actor_rollout_ref.actor
    from verl.trainer.ppo import core_algos

    values = torch.randn(b.response_mask.shape)
    for estimator in ("gae", "grpo"):
        cfg.algorithm.adv_estimator = estimator
        adv, returns = compute_advantages(cfg.algorithm, rewards, b.response_mask, b.uids, values)
        logp = torch.randn(b.response_mask.shape, requires_grad=True)
        entropy = torch.rand(b.response_mask.shape, requires_grad=True)
        vpreds = torch.randn(b.response_mask.shape, requires_grad=True)
        old, ref = logp.detach() + 0.1 * torch.randn_like(logp), logp.detach() + 0.1 * torch.randn_like(logp)
        loss, _ = actor_loss(
            a,
            core_algos.get_policy_loss_fn("vanilla"),
            policy_loss_config(a),
            logp,
            entropy,
            old,
            ref,
            adv,
            b.response_mask,
        )
        vf_loss, _ = core_algos.compute_value_loss(vpreds, returns, values, b.response_mask, 0.5)
        (loss + vf_loss).backward()
        for grad in (logp.grad, entropy.grad, vpreds.grad):
            assert torch.all(grad[obs] == 0), estimator
            assert grad[b.response_mask > 0].abs().sum() > 0, estimator  # the policy tokens do get gradient
        if estimator == "grpo":
            assert torch.all(adv[obs] == 0)


def test_data_order_is_a_function_of_step() -> None:
    seen = [
        i for step in range(1, 8) for i in batch_indices(step, n_rows=10, batch_size=3, seed=1, shuffle=True)
    ]
    assert sorted(seen[:9]) == sorted(set(seen[:9]))  # no repeats inside an epoch
    assert sorted(seen[:10]) == list(range(10))  # every row once per epoch
    assert batch_indices(5, 10, 3, 1, True) == seen[12:15]


# ---- checkpoint / resume, faults ---------------------------------------------------------------------


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run(base_model, bm25_index, tmp_path) -> None:
    common = [
        f"actor_rollout_ref.model.path={base_model}",
        f"retriever.index_dir={bm25_index}",
        "retriever.backend=bm25",
        "data.train_batch_size=2",
        "actor_rollout_ref.rollout.n=2",
        "actor_rollout_ref.actor.ppo_mini_batch_size=1",
        "trainer.total_training_steps=4",
        "trainer.save_freq=2",
        "trainer.save_merged=false",
    ]
    whole = train(load_config(PPOConfig, PRESET, [*common, f"trainer.default_local_dir={tmp_path / 'a'}"]))

    cmd = [
        sys.executable,
        "-m",
        "search_r1.rl.trainer",
        "--config",
        str(PRESET),
        *common,
        f"trainer.default_local_dir={tmp_path / 'b'}",
    ]
    run_b = tmp_path / "b" / "tiny_ppo"
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (run_b / "metrics.jsonl").exists() or len(read_metrics(run_b)) < 3:  # step 3 logged, not saved
        assert proc.poll() is None and time.monotonic() < deadline, "trainer ended before it could be killed"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run_b / "global_step_2").exists() and not (run_b / "global_step_4").exists()
    subprocess.run([*cmd, "--resume"], cwd=REPO_ROOT, check=True, capture_output=True)

    a, b = read_metrics(whole), read_metrics(run_b)
    assert [m["step"] for m in b] == [1, 2, 3, 4] == [m["step"] for m in a]
    assert [m["data/uids"] for m in b] == [m["data/uids"] for m in a]
    assert (run_b / "global_step_4" / "state.pt").exists()


class FlakyRetriever:
    """The world's title retriever, except calls in ``down`` go to a dead port through the real client."""

    def __init__(self, inner, dead_url: str, down: range):
        self.inner, self.dead_url, self.down, self.calls = inner, dead_url, down, 0

    async def retrieve(self, queries, topk=None):
        self.calls += 1
        if self.calls in self.down:
            async with AsyncRetrieverClient(self.dead_url, timeout=1.0, max_retries=1, backoff=0.01) as dead:
                return await dead.retrieve(queries, topk)
        return await self.inner.retrieve(queries, topk)


@pytest.mark.slow
def test_retriever_outage_is_counted_and_training_recovers(sft_start, world, free_port, tmp_path) -> None:
    flaky = FlakyRetriever(TitleRetriever(world.corpus), f"http://127.0.0.1:{free_port}", range(3, 7))
    run = train(
        make_cfg(sft_start, tmp_path, "trainer.total_training_steps=4", "data.train_batch_size=4"),
        retriever=flaky,
    )
    m = read_metrics(run)
    assert [x["step"] for x in m] == [1, 2, 3, 4]
    failures = [x["rollout/retrieval_failures"] for x in m]
    assert sum(failures) == 4  # every failed call became one counted failure observation
    assert flaky.calls > 7 and failures[-1] == 0 and m[-1]["rollout/searches_per_question"] > 0


# ---- learning -----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sft_start(base_model, world, tmp_path_factory) -> Path:
    """``train_sft.sh``'s tiny checkpoint when it exists; else an SFT-like start built here: the base
    model fine-tuned on the oracle teacher's trajectories (policy tokens only, like SFT's labels)."""
    if SFT_MERGED.exists():
        return SFT_MERGED
    import hashlib

    key = hashlib.sha256(
        f"{(base_model / 'model.safetensors').stat().st_mtime_ns}-{base_model}-{SFT_RECIPE}".encode()
    )
    out_dir = RUNS_DIR / "rl_tests" / f"sft_like-{key.hexdigest()[:12]}"
    if (out_dir / "config.json").exists():
        return out_dir
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from search_r1.agent.protocol import ProtocolConfig
    from search_r1.data.schema import read_parquet, uid_of
    from sft.oracle import OracleTeacher, load_oracle_questions

    tok = AutoTokenizer.from_pretrained(base_model)
    rows = read_parquet(world.train)[: SFT_RECIPE["questions"]]
    prompts = [
        tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False)
        for r in rows
    ]
    teacher = OracleTeacher(tok, load_oracle_questions(world.root / "questions.jsonl"))
    protocol = ProtocolConfig.from_yaml(CONFIG_DIR / "agent" / "tiny.yaml")
    out = asyncio.run(
        rollout(
            teacher,
            tok,
            TitleRetriever(world.corpus),
            prompts,
            protocol,
            SamplingParams(temperature=1.0, seed=0),
            uids=[uid_of(r) for r in rows],
        )
    )
    trajs = [t for t in out.trajectories if t.final_answer is not None]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_model)
    opt = torch.optim.AdamW(model.parameters(), lr=SFT_RECIPE["lr"])
    rng = np.random.default_rng(0)
    for _ in range(SFT_RECIPE["steps"]):
        b = collate(
            [trajs[i] for i in rng.choice(len(trajs), SFT_RECIPE["batch"], replace=False)], tok.pad_token_id
        )
        labels = b.input_ids.clone()
        labels[:, : b.prompt_len] = -100
        labels[:, b.prompt_len :][b.response_mask == 0] = -100
        loss = model(
            input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids, labels=labels
        ).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


# Deliberately under-trained (a partial SFT), so RL has room to improve it.
SFT_RECIPE = {"questions": 128, "steps": 100, "batch": 8, "lr": 2e-3}


def _window(metrics: list[dict], steps: slice) -> tuple[float, float, int]:
    """Mean reward over a window of steps, its standard error (from the per-sample rewards), and n."""
    rewards = [r for m in metrics[steps] for r in m["reward/samples"]]
    return float(np.mean(rewards)), float(np.std(rewards, ddof=1) / np.sqrt(len(rewards))), len(rewards)


@pytest.mark.slow
@pytest.mark.xfail(
    reason="known gap (issue 6): GRPO on a 2M model does not move the reward within minutes. Measured "
    "(first vs last 3 steps, margin 2 SE): SFT-like start 100 steps, 12 steps: 0.146 -> 0.146 (0.065); "
    "partial SFT on world + practice trajectories, 150 steps: 0.129 -> 0.158 (0.055), 30 steps at 2e-4: "
    "0.133 -> 0.154 (0.037); 400 steps: 0.242 -> 0.229 (0.100); the full SFT model starts at 0.84 on "
    "its own training questions (sessions 4 and 6)",
    strict=False,
)
def test_rl_from_sft_start_raises_reward(sft_start, bm25_index, tmp_path) -> None:
    """Fixed seed; reward = EM shaped by format (0.2 for a well-formed wrong answer), so a partly
    trained start gets signal from its first steps. The margin comes from the measured spread: the last window must beat the first by
    more than two standard errors of the difference (each window's rewards are 48 samples), which a
    run whose reward is not moving passes about 2% of the time."""
    run = train(
        load_config(
            PPOConfig,
            PRESET,
            [
                f"actor_rollout_ref.model.path={sft_start}",
                f"trainer.default_local_dir={tmp_path}",
                f"retriever.index_dir={bm25_index}",
                "retriever.backend=bm25",
                "algorithm.adv_estimator=grpo",
                "data.train_batch_size=4",
                "actor_rollout_ref.rollout.n=4",
                "actor_rollout_ref.actor.ppo_mini_batch_size=2",
                "actor_rollout_ref.actor.optim.lr=1e-4",
                "trainer.total_training_steps=12",
                "trainer.save_freq=-1",
                "reward.reward_kwargs.reward=em_format",
                "trainer.save_merged=false",
            ],
        )
    )
    m = read_metrics(run)
    first, first_se, _ = _window(m, slice(0, 3))
    last, last_se, _ = _window(m, slice(-3, None))
    margin = 2 * float(np.hypot(first_se, last_se))
    print(
        f"reward first 3 steps {first:.3f}±{first_se:.3f}, last 3 steps {last:.3f}±{last_se:.3f}, margin {margin:.3f}"
    )
    assert last - first > margin


@pytest.mark.slow
def test_rl_from_base_model_completes_with_metrics(base_model, bm25_index, tmp_path) -> None:
    run = train(
        make_cfg(
            base_model,
            tmp_path,
            f"retriever.index_dir={bm25_index}",
            "retriever.backend=bm25",
            "trainer.save_merged=true",
        )
    )
    m = read_metrics(run)
    assert [x["step"] for x in m] == [1, 2, 3]
    for key in (
        "reward/mean",
        "reward/em",
        "rollout/searches_per_question",
        "rollout/valid_action_ratio",
        "rollout/response_length",
        "actor/kl_loss",
        "actor/entropy",
        "actor/pg_clipfrac",
        "critic/vf_loss",
        "rollout/retrieval_failures",
        "timing_s/rollout",
        "timing_s/update",
    ):
        assert all(np.isfinite(x[key]) for x in m), key
    assert (run / "merged" / "config.json").exists()
