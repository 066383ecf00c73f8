"""The single-machine trainer: masking, checkpoint/resume, retriever faults, learning on the embedded world."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from agent_fixtures import TOY_CFG, MemoryRetriever, prompt_ids, toy_model, toy_tokenizer  # noqa: E402
from sft_helpers import TitleRetriever  # noqa: E402

from search_r1.agent.engines.base import SamplingParams  # noqa: E402
from search_r1.agent.engines.hf import HFEngine  # noqa: E402
from search_r1.agent.rollout import rollout  # noqa: E402
from search_r1.config import load_config  # noqa: E402
from search_r1.data.schema import read_parquet, uid_of  # noqa: E402
from search_r1.paths import CONFIG_DIR, REPO_ROOT  # noqa: E402
from search_r1.retrieval.client import AsyncRetrieverClient  # noqa: E402
from search_r1.rl.algos import compute_advantages, policy_loss_config  # noqa: E402
from search_r1.rl.batch import collate, place_outcome_reward  # noqa: E402
from search_r1.rl.checkpoint import CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402
from search_r1.rl.config import DataConfig, PPOConfig  # noqa: E402
from search_r1.rl.learning import paired_gain, read_metrics  # noqa: E402
from search_r1.rl.select import SelectConfig, select  # noqa: E402
from search_r1.rl.trainer import actor_loss, batch_indices, train, train_rows  # noqa: E402
from search_r1.world.setup import ensure_sft_model, ensure_unseen_practice_world  # noqa: E402

PRESET = CONFIG_DIR / "rl" / "tiny_ppo.yaml"


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
    """Resume restores only the step, so a step's batch must depend on nothing else: not on the
    steps computed before it in this process, nor on the global RNGs the rollout consumes."""
    steps = range(1, 8)
    seen = [batch_indices(step, n_rows=10, batch_size=3, seed=1, shuffle=True) for step in steps]
    flat = [i for batch in seen for i in batch]
    assert sorted(flat[:10]) == list(range(10))  # every row once in epoch 0 ...
    assert len(set(flat[10:20])) == len(flat[10:20])  # ... and no repeat in epoch 1 (step 4 crosses over)
    assert flat[:10] != flat[10:20] and flat[:10] != list(range(10))  # reshuffled per epoch
    # Pinned (numpy's PCG64 stream is stable across versions): a checkpoint resumed on another
    # install still sees the batches it had not seen.
    assert seen == [[8, 4, 7], [0, 1, 2], [5, 9, 6], [3, 7, 2], [4, 6, 1], [0, 3, 5], [9, 8, 8]]
    # Any step alone, in reverse order, with the global RNGs in another state: the same batches.
    random.seed(123), np.random.seed(123), torch.manual_seed(123)
    np.random.permutation(10), torch.randperm(10)
    assert [batch_indices(s, 10, 3, 1, True) for s in reversed(steps)] == seen[::-1]
    assert batch_indices(1, 10, 3, 2, True) != seen[0]  # the seed does change the order
    assert [batch_indices(s, 10, 3, 1, False) for s in range(1, 5)] == [
        [0, 1, 2],
        [3, 4, 5],
        [6, 7, 8],
        [9, 0, 1],
    ]


def test_train_max_samples_picks_a_subset_as_verl_does(world) -> None:
    every = [uid_of(r) for r in train_rows(DataConfig(train_files=str(world.train)))]
    assert len(every) > 100
    first = [
        uid_of(r)
        for r in train_rows(DataConfig(train_files=str(world.train), train_max_samples=5, shuffle=False))
    ]
    assert first == every[:5]

    def subset(seed: int) -> list[str]:
        cfg = DataConfig(train_files=str(world.train), train_max_samples=16, seed=seed)
        return [uid_of(r) for r in train_rows(cfg)]

    assert subset(1) == subset(1) and len(set(subset(1))) == 16 and set(subset(1)) <= set(every)
    assert subset(1) != subset(2) and subset(1) != every[:16]


def test_paired_gain_pairs_samples_with_their_questions() -> None:
    """Three samples per prompt; q2 and q3 are seen in both windows, q1 only early, q4 only late."""
    metrics = [
        {"data/uids": ["q1", "q2"], "reward/samples": [0.0, 0.0, 0.0, 0.2, 0.2, 0.2]},
        {"data/uids": ["q3"], "reward/samples": [1.0, 0.2, 0.0]},
        {"data/uids": ["q2", "q3"], "reward/samples": [1.0, 1.0, 0.4, 1.0, 1.0, 1.0]},
        {"data/uids": ["q4"], "reward/samples": [1.0, 1.0, 1.0]},
    ]
    g = paired_gain(metrics, slice(0, 2), slice(2, None))
    assert g.questions == 2
    assert g.early == pytest.approx((0.2 + 0.4) / 2) and g.late == pytest.approx((0.8 + 1.0) / 2)
    assert g.gain == pytest.approx(0.6) and g.se == pytest.approx(0.0)
    with pytest.raises(ValueError, match="share 0 questions"):
        paired_gain(metrics, slice(0, 1), slice(3, None))


# ---- checkpoint / resume, faults ---------------------------------------------------------------------


class InProcessRetriever:
    """The index's searcher called directly, without the HTTP server. Through the server an answer
    arrives from another thread at a time that depends on the machine, and which episodes share a
    ``generate()`` batch (so which sampling noise each gets) depends on it; answered synchronously, the
    batches and the samples are a function of the data and the seed, so two runs can be compared bit
    for bit. ``die_after`` SIGKILLs the process at that call: a kill at an exact point mid-run."""

    def __init__(self, index_dir: str, backend: str = "bm25", die_after: int = 0):
        from search_r1.retrieval.config import ServerConfig
        from search_r1.retrieval.searchers import load_retriever

        self.searcher = load_retriever(ServerConfig(index_dir=index_dir, backend=backend, port=0))
        self.die_after, self.calls = die_after, 0

    async def retrieve(self, queries, topk=None):
        from search_r1.data.corpus import Doc

        self.calls += 1
        if self.calls == self.die_after:
            os.kill(os.getpid(), signal.SIGKILL)
        return [[Doc(h.id, h.contents) for h in hits] for hits in self.searcher.retrieve(queries, topk or 3)]


# The trainer's own entry point (``--resume`` included) in a child process, with the in-process
# retriever, single-threaded and with deterministic algorithms: one thread because the order of a
# parallel reduction follows the thread count, so every process must use the same one (and the
# machine's cores are shared); deterministic algorithms so an op that cannot repeat itself raises
# instead of quietly making the runs differ. KILL_AFTER_STEP > 0 SIGKILLs the process right after it
# logs that step.
TRAIN_CHILD = """
import contextlib, os, signal, sys
import torch
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
sys.path.insert(0, {tests!r})
import search_r1.rl.trainer as trainer
from test_rl import InProcessRetriever

trainer.open_retriever = lambda cfg, runner, given=None: contextlib.nullcontext(InProcessRetriever(cfg.index_dir))
log = trainer.Logger.log

def log_then_die(self, metrics):
    log(self, metrics)
    if metrics["step"] == {kill_after_step}:
        os.kill(os.getpid(), signal.SIGKILL)

trainer.Logger.log = log_then_die
trainer.main({argv!r})
"""


def run_child(code: str, **fmt) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    code = code.format(tests=str(Path(__file__).parent), **fmt)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )


def assert_same_state(a, b, where: str = "state") -> None:
    """Nested checkpoint contents are equal, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_state(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), where
    else:
        assert a == b, where


def without_timing(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if not k.startswith("timing_s/")} for m in metrics]


class _TwoLayers(torch.nn.Module):
    """A trainable layer and a frozen one (as a LoRA adapter over its base), optionally a third."""

    def __init__(self, extra: bool = False, freeze: str = "frozen"):
        super().__init__()
        self.trained, self.frozen = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
        self.extra = torch.nn.Linear(3, 1) if extra else None
        getattr(self, freeze).requires_grad_(False)

    def optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW([q for q in self.parameters() if q.requires_grad], lr=0.1)


def test_checkpoint_restores_exactly_and_refuses_what_does_not_fit(tmp_path) -> None:
    torch.manual_seed(0)
    model, critic = _TwoLayers(), _TwoLayers()
    opt, critic_opt = model.optimizer(), critic.optimizer()
    model.trained(torch.randn(2, 3)).sum().backward()
    opt.step()
    path = save_checkpoint(tmp_path, 7, model, None, opt, None)
    assert set(torch.load(path / "state.pt", weights_only=False)["actor"]) == {
        "trained.weight",
        "trained.bias",
    }

    fresh = _TwoLayers()
    fresh_opt = fresh.optimizer()
    assert load_checkpoint(path, fresh, None, fresh_opt, None) == 7
    assert_same_state(fresh.trained.state_dict(), model.trained.state_dict())
    assert_same_state(fresh_opt.state_dict(), opt.state_dict())

    bigger = _TwoLayers(extra=True)
    with pytest.raises(
        CheckpointError, match=r"2 trainable tensors missing \['extra.bias', 'extra.weight'\]"
    ):
        load_checkpoint(path, bigger, None, bigger.optimizer(), None)
    other = _TwoLayers(freeze="trained")
    with pytest.raises(CheckpointError, match=r"2 unexpected \['trained.bias', 'trained.weight'\]"):
        load_checkpoint(path, other, None, other.optimizer(), None)
    with pytest.raises(CheckpointError, match="holds no critic, but this run has one"):
        load_checkpoint(path, _TwoLayers(), critic, _TwoLayers().optimizer(), critic_opt)
    with_critic = save_checkpoint(tmp_path, 8, model, critic, opt, critic_opt)
    with pytest.raises(CheckpointError, match="holds a critic, but this run has none"):
        load_checkpoint(with_critic, fresh, None, fresh_opt, None)


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run(sft_start, bm25_index, tmp_path) -> None:
    """PPO with a critic (GAE) from the SFT model (it searches, and some of its answers are right, so
    rewards differ between samples), 4 steps, checkpoints at 2 and 4. One run goes through; another is
    SIGKILLed right after logging step 3 (done, not saved) and resumed with ``--resume`` from step 2.
    The resumed run's metrics (per-sample rewards, losses, KL, grad norms: everything but wall-clock
    times) and its final checkpoint (actor and critic weights, both AdamW states, RNG states) equal
    the uninterrupted run's bit for bit: CPU arithmetic repeats itself exactly given the same thread
    count and batches, so no tolerance is needed, and any difference is something resume lost."""
    argv = [
        "--config",
        str(PRESET),
        f"actor_rollout_ref.model.path={sft_start}",
        f"retriever.index_dir={bm25_index}",
        "data.train_batch_size=2",
        "actor_rollout_ref.rollout.n=2",
        "actor_rollout_ref.actor.ppo_mini_batch_size=1",
        "trainer.total_training_steps=4",
        "trainer.save_freq=2",
        "trainer.save_merged=false",
    ]
    whole = run_child(
        TRAIN_CHILD, argv=[*argv, f"trainer.default_local_dir={tmp_path / 'a'}"], kill_after_step=0
    )
    assert whole.returncode == 0, whole.stderr[-3000:]
    run_a, run_b = tmp_path / "a" / "tiny_ppo", tmp_path / "b" / "tiny_ppo"

    b_argv = [*argv, f"trainer.default_local_dir={tmp_path / 'b'}"]
    killed = run_child(TRAIN_CHILD, argv=b_argv, kill_after_step=3)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert [m["step"] for m in read_metrics(run_b)] == [1, 2, 3]
    assert sorted(p.name for p in run_b.glob("global_step_*")) == ["global_step_2"]
    resumed = run_child(TRAIN_CHILD, argv=[*b_argv, "--resume"], kill_after_step=0)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {run_b / 'global_step_2'} (step 2)" in resumed.stdout

    a, b = read_metrics(run_a), read_metrics(run_b)
    assert [m["step"] for m in b] == [1, 2, 3, 4] == [m["step"] for m in a]
    assert len({json.dumps(m["reward/samples"]) for m in a}) > 1  # rewards vary: a real comparison
    assert all(m["rollout/searches_per_question"] > 0 for m in a)
    assert without_timing(b) == without_timing(a)
    state_a, state_b = (
        torch.load(r / "global_step_4" / "state.pt", weights_only=False) for r in (run_a, run_b)
    )
    assert state_a["critic"] is not None and state_a["actor_opt"]["state"]  # all parts are there to compare
    assert_same_state(state_a, state_b)
    # and the weights did move in steps 3-4, so equal final weights are not just the step-2 ones
    at_2 = torch.load(run_a / "global_step_2" / "state.pt", weights_only=False)
    assert any(not torch.equal(at_2["actor"][k], v) for k, v in state_a["actor"].items())


SELECT_CHILD = """
import sys
import torch
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
sys.path.insert(0, {tests!r})
from test_rl import InProcessRetriever
from search_r1.rl.select import SelectConfig, select

cfg = SelectConfig(**{cfg!r})
cfg.retriever.index_dir = {index!r}
select(cfg, InProcessRetriever({index!r}, "dense", die_after={die_after}))
"""


@pytest.mark.slow
def test_select_killed_and_rerun_writes_what_an_uninterrupted_run_writes(
    sft_start, unseen_world, tmp_path
) -> None:
    """The pass-rate pre-pass keeps nothing between runs: killed mid-rollout (at its 20th search) it
    leaves no output, and the rerun writes the same parquet, byte for byte, and the same report as a
    run that was never killed."""
    train_files, index = unseen_world
    fields = {"model": str(sft_start), "train_files": str(train_files), "max_questions": 12, "n": 4}
    whole = run_child(
        SELECT_CHILD,
        cfg=fields | {"out": str(tmp_path / "a" / "kept.parquet")},
        index=str(index),
        die_after=0,
    )
    assert whole.returncode == 0, whole.stderr[-3000:]
    out = tmp_path / "b" / "kept.parquet"
    killed = run_child(SELECT_CHILD, cfg=fields | {"out": str(out)}, index=str(index), die_after=20)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not out.exists() and not out.with_suffix(".pass_rates.json").exists()
    rerun = run_child(SELECT_CHILD, cfg=fields | {"out": str(out)}, index=str(index), die_after=0)
    assert rerun.returncode == 0, rerun.stderr[-3000:]

    ref = tmp_path / "a" / "kept.parquet"
    assert out.read_bytes() == ref.read_bytes()
    reports = [json.loads(p.with_suffix(".pass_rates.json").read_text()) for p in (ref, out)]
    for r in reports:
        r["config"].pop("out")
    assert reports[0] == reports[1]
    rates = reports[0]["pass_rates"]
    assert len(rates) == 12 and 0 < reports[0]["selected"] < 12  # some kept, some not: a real selection
    assert sorted(p.name for p in out.parent.iterdir()) == ["kept.parquet", "kept.pass_rates.json"]


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
def sft_start(tiny_model) -> Path:
    """The tiny preset's SFT model: the shipped one (``sft.ship``) while its key matches the committed
    configs; otherwise ``train_sft.sh`` runs, keyed by the recipe (about 16 minutes on 2 cores).
    ``scripts/test.sh`` builds it before pytest (``python -m search_r1.world fixtures``)."""
    return ensure_sft_model(tiny_model)


@pytest.fixture(scope="session")
def unseen_world(world) -> tuple[Path, Path]:
    """(train parquet, dense index) of a practice world the SFT set does not contain (the tiny preset
    distils seeds 1 and 2): on its own training questions SFT already scores about 0.84 (session 6)."""
    return ensure_unseen_practice_world(world)


@pytest.fixture(scope="session")
def sometimes_solved(sft_start, unseen_world, tmp_path_factory) -> tuple[Path, Path]:
    """(parquet, index): the unseen questions the SFT model solves in some of 8 samples, from 64."""
    train_files, index = unseen_world
    out = tmp_path_factory.mktemp("select") / "sometimes.parquet"
    cfg = SelectConfig(model=str(sft_start), train_files=str(train_files), out=str(out))
    cfg.retriever.index_dir = str(index)
    return select(cfg), index


LEARNING_RUN = {"questions": 16, "batch": 4, "samples": 8, "epochs": 4}  # 16 GRPO steps
LEARNING_MARGIN = 0.04  # measured: learning runs gained 0.06-0.18, runs that cannot learn -0.01-0.01


@pytest.mark.slow
def test_rl_from_sft_start_raises_reward(sometimes_solved, sft_start, tmp_path) -> None:
    """GRPO from the SFT model on 16 questions it has not seen and solves only sometimes, four
    epochs, fixed seed. Each question's mean reward (EM shaped by format: 0.2 for a well-formed
    wrong answer) in the last epoch is compared with the first (``paired_gain``). The margin comes
    from the measured spread (docs/benchmarks.md, RL, session 7): six runs of this setting gained
    +0.06 to +0.18 (mean 0.147, SD 0.046) and four at lr 0, which cannot learn, -0.01 to +0.01
    (SD 0.008; one run's own SE is 0.025-0.038). 0.04 lies between the two: a learning run falls
    below it about 1% of the time, and a run that cannot learn passes it at most about 9% of the
    time (by its SE; by the spread between runs, far less)."""
    train_files, index = sometimes_solved
    per_epoch = LEARNING_RUN["questions"] // LEARNING_RUN["batch"]
    run = train(
        load_config(
            PPOConfig,
            PRESET,
            [
                f"actor_rollout_ref.model.path={sft_start}",
                f"trainer.default_local_dir={tmp_path}",
                f"retriever.index_dir={index}",
                f"data.train_files={train_files}",
                f"data.train_max_samples={LEARNING_RUN['questions']}",
                f"data.train_batch_size={LEARNING_RUN['batch']}",
                "algorithm.adv_estimator=grpo",
                f"actor_rollout_ref.rollout.n={LEARNING_RUN['samples']}",
                "actor_rollout_ref.actor.ppo_mini_batch_size=2",
                "actor_rollout_ref.actor.optim.lr=1e-4",
                f"trainer.total_training_steps={per_epoch * LEARNING_RUN['epochs']}",
                "trainer.save_freq=-1",
                "reward.reward_kwargs.reward=em_format",
                "trainer.save_merged=false",
            ],
        )
    )
    gain = paired_gain(read_metrics(run), slice(0, per_epoch), slice(-per_epoch, None))
    print(f"first vs last epoch: {gain}")
    assert gain.questions == LEARNING_RUN["questions"]
    assert gain.gain > LEARNING_MARGIN


@pytest.mark.slow
def test_select_falls_back_to_every_rated_question_below_min_keep() -> None:
    from search_r1.rl.select import choose

    rates = {"a": 0.0, "b": 0.5, "c": 1.0, "d": 0.25}
    assert choose(rates, SelectConfig()) == ({"b", "d"}, False)
    assert choose(rates, SelectConfig(min_keep=2)) == ({"b", "d"}, False)
    assert choose(rates, SelectConfig(min_keep=3)) == (set(rates), True)
    assert choose({"a": 0.0, "c": 1.0}, SelectConfig(min_keep=1)) == ({"a", "c"}, True)


def test_select_keeps_the_rows_whose_pass_rate_is_in_bounds(base_model, world, bm25_index, tmp_path) -> None:
    """Real rollouts of the tiny base model, 12 questions × 4 samples: the parquet holds exactly the
    rows the report rates strictly inside the bounds, in the source's schema and order."""
    cfg = SelectConfig(
        model=str(base_model),
        train_files=str(world.train),
        out=str(tmp_path / "kept.parquet"),
        max_questions=12,
        n=4,
    )
    cfg.retriever.index_dir, cfg.retriever.backend = str(bm25_index), "bm25"
    out = select(cfg)
    rates = json.loads(out.with_suffix(".pass_rates.json").read_text())["pass_rates"]
    assert len(rates) == 12 and all(p * 4 == int(p * 4) and 0 <= p <= 1 for p in rates.values())
    source = [uid_of(r) for r in read_parquet(world.train)]
    kept = [uid_of(r) for r in read_parquet(out)]
    assert kept == [u for u in source if 0 < rates.get(u, 0) < 1]
    assert pq.read_schema(out).equals(pq.read_schema(world.train))


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
