"""``python -m verl.trainer.main_ppo`` with our search metrics on every training step.

verl 0.9.1's default V1 trainer logs fixed rollout metrics per training step (scores, lengths,
``num_turns``); the episode counts that :class:`~search_r1.rl.agent_loop.SearchAgentLoop` puts in
``extra_fields`` reach the logger only at validation (``val-aux/...``, docs/rl.md "Step metrics").
A retriever outage mid-run would then stay invisible until the next validation. This entry point
takes the same arguments as verl's (``train_ppo.sh`` calls it with ``--config-path``,
``--config-name`` and ``hydra.searchpath=[pkg://verl.trainer.config]``) and changes one thing: the
TaskRunner, the extension point ``run_ppo(config, task_runner_class)`` offers recipes. Our
:class:`SearchTaskRunner` runs as a Ray actor in its own process, so it is there, in ``run``, that the
registered trainer class for ``trainer.v1.trainer_mode`` is replaced by a subclass whose
``_compute_metrics`` adds :func:`search_metrics` of the step's episodes and runs the collapse check
of :mod:`search_r1.rl.health` on the step's metrics (warnings only: verl's config has no key for
stopping, so the check runs with :class:`~search_r1.rl.config.HealthConfig`'s defaults).

``trainer.use_v1=false`` runs verl's own legacy entry unchanged; that trainer already logs
``tool_call_counts/{mean,min,max}`` (our loop sets it to the search count) every step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import hydra
import ray
from omegaconf import DictConfig
from verl.trainer import main_ppo as verl_main_ppo
from verl.trainer.main_ppo import TaskRunnerV1, run_ppo
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.utils.config import validate_config
from verl.utils.device import auto_set_device

from search_r1.rl.config import HealthConfig
from search_r1.rl.health import VERL_KEYS, HealthMonitor

PREFIX = "search_r1/"


def search_metrics(extra_fields: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Step metrics from the ``extra_fields`` of the step's real (non-padding) episodes.

    "Per question" means per episode: each of a question's ``rollout.n`` samples counts once, as in
    validation's ``mean@N``. Retrieval failures are given twice: the step's total, which is what an
    alert wants (> 0 means the retriever failed this step), and per episode, which equals
    ``searches_per_question`` when the retriever is down. The answer rate is the share of episodes
    that ended with an ``<answer>`` (``finish_reason == "answer"``), read from the loop itself so it
    does not depend on how the reward was computed; the format validity is the share whose response
    follows the tag grammar (the loop checks it with the reward's own checker). No episodes (an all-padding batch) give no metrics
    rather than NaNs.
    """
    n = len(extra_fields)
    if n == 0:
        return {}

    def total(key: str) -> float:
        return float(sum(int(f.get(key) or 0) for f in extra_fields))

    failures = total("retrieval_failures")
    return {
        f"{PREFIX}searches_per_question": total("searches") / n,
        f"{PREFIX}retrieval_failures_total": failures,
        f"{PREFIX}retrieval_failures_per_question": failures / n,
        f"{PREFIX}invalid_actions_per_question": total("invalid_actions") / n,
        f"{PREFIX}answer_rate": sum(f.get("finish_reason") == "answer" for f in extra_fields) / n,
        f"{PREFIX}format_valid": sum(bool(f.get("format_valid")) for f in extra_fields) / n,
    }


def step_extra_fields(batch: Any) -> list[Mapping[str, Any]]:
    """The ``extra_fields`` of the step's non-padding samples, read from TransferQueue.

    verl's tags carry only lengths, status and weight versions, not the loop's extra fields, so they
    are fetched the way verl's own ``_compute_metrics`` fetches speculative-decoding stats. Padding
    samples (tag ``is_padding``, added to make the batch divisible by the data-parallel size) are
    copies of a real sample and would count its searches twice; they are not fetched.
    """
    import transfer_queue as tq

    keys = [key for key, tag in zip(batch.keys, batch.tags, strict=True) if not tag.get("is_padding", False)]
    if not keys:
        return []
    data = tq.kv_batch_get(keys=keys, partition_id=batch.partition_id, select_fields=["extra_fields"])
    return [f if isinstance(f, Mapping) else {} for f in data.pop("extra_fields").tolist()]


def with_search_metrics(trainer_cls: type) -> type:
    """``trainer_cls`` whose ``_compute_metrics`` also logs :func:`search_metrics` for the step and
    warns of a collapse (:class:`~search_r1.rl.health.HealthMonitor` over the step's metrics).

    ``_compute_metrics`` runs once per training step on the whole step's batch (every
    ``parameter_sync_step`` mini-step), before the batch is cleared from TransferQueue and before
    ``metrics`` goes to the logger, so the keys added here are logged with verl's own, and
    ``actor/entropy`` (verl's, from the old log-probs) is already there for the check.
    """

    class SearchMetricsTrainer(trainer_cls):  # type: ignore[misc, valid-type]
        def _compute_metrics(
            self, batch: Any, metrics: dict, timing_raw: dict, global_steps: int, epoch: int
        ):
            super()._compute_metrics(batch, metrics, timing_raw, global_steps=global_steps, epoch=epoch)
            metrics.update(search_metrics(step_extra_fields(batch)))
            if getattr(self, "search_r1_health", None) is None:  # per trainer; a resumed run starts afresh
                self.search_r1_health = HealthMonitor(HealthConfig(), VERL_KEYS)
            self.search_r1_health.check(metrics, global_steps)

    SearchMetricsTrainer.__name__ = SearchMetricsTrainer.__qualname__ = f"SearchMetrics{trainer_cls.__name__}"
    SearchMetricsTrainer.search_r1_wrapped = trainer_cls
    return SearchMetricsTrainer


def install_search_metrics(trainer_mode: str) -> type:
    """Replace the trainer registered as ``trainer_mode`` by its :func:`with_search_metrics` subclass.

    The registry entry is replaced rather than a new name registered: verl branches on the
    ``trainer_mode`` string itself (replay buffer, refill, checkpoint recovery), so the name must stay.
    Idempotent, and it only touches the registry of the process it runs in (the TaskRunner actor's).
    """
    from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY, get_trainer_cls

    trainer_cls = get_trainer_cls(trainer_mode)
    if not hasattr(trainer_cls, "search_r1_wrapped"):
        TRAINER_REGISTRY[trainer_mode] = with_search_metrics(trainer_cls)
    return TRAINER_REGISTRY[trainer_mode]


class SearchTaskRunner(TaskRunnerV1.__ray_actor_class__):  # type: ignore[misc, name-defined]
    """verl's V1 TaskRunner, with our trainer subclass installed in its own (Ray actor) process."""

    def run(self, config: DictConfig) -> None:
        install_search_metrics(config.trainer.v1.trainer_mode)
        super().run(config)


SearchTaskRunnerActor = ray.remote(SearchTaskRunner)


@hydra.main(config_path="pkg://verl.trainer.config", config_name="ppo_trainer", version_base=None)
def main(config: DictConfig) -> None:
    """verl's ``main`` with :data:`SearchTaskRunnerActor` for the V1 trainer; the legacy trainer runs
    through verl's own ``main`` body, untouched."""
    if not config.trainer.use_v1:
        verl_main_ppo.main.__wrapped__(config)
        return
    auto_set_device(config)
    validate_config(
        config=config,
        use_reference_policy=need_reference_policy(config),
        use_critic=need_critic(config),
    )
    run_ppo(config, task_runner_class=SearchTaskRunnerActor)


if __name__ == "__main__":
    import sys

    from search_r1.rl.verl_config import check_command_line

    check_command_line(sys.argv[1:])  # a bad key or value: exit 2 and one line, before Hydra and Ray
    main()
