"""The RL math, taken from verl's ``core_algos`` so both trainers compute the same thing.

Plug-in points are verl's own registries: a new advantage estimator is
``@core_algos.register_adv_est("name")`` and a new policy loss ``@core_algos.register_policy_loss("name")``;
both trainers then select it by ``algorithm.adv_estimator`` / ``actor.policy_loss.loss_mode``.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from verl.trainer.config import AlgoConfig
from verl.trainer.ppo import core_algos

from search_r1.rl.config import ActorConfig, AlgorithmConfig


def compute_advantages(
    algo: AlgorithmConfig,
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    values: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns), dispatched like verl's ``ray_trainer.compute_advantage``."""
    if algo.adv_estimator == "gae":
        if values is None:
            raise ValueError("adv_estimator=gae needs the critic's values")
        return core_algos.compute_gae_advantage_return(
            token_level_rewards=token_level_rewards,
            values=values,
            response_mask=response_mask,
            gamma=algo.gamma,
            lam=algo.lam,
        )
    fn = core_algos.get_adv_estimator_fn(algo.adv_estimator)
    kwargs = {"token_level_rewards": token_level_rewards, "response_mask": response_mask, "index": index}
    params = inspect.signature(fn).parameters
    if "config" in params:
        kwargs["config"] = AlgoConfig(
            gamma=algo.gamma,
            lam=algo.lam,
            adv_estimator=algo.adv_estimator,
            norm_adv_by_std_in_grpo=algo.norm_adv_by_std_in_grpo,
        )
    if "norm_adv_by_std_in_grpo" in params:
        kwargs["norm_adv_by_std_in_grpo"] = algo.norm_adv_by_std_in_grpo
    return fn(**kwargs)


def policy_loss_config(actor: ActorConfig) -> DictConfig:
    """The slice of verl's ``ActorConfig`` that verl's policy-loss functions read."""
    return OmegaConf.create(
        {
            "clip_ratio": actor.clip_ratio,
            "clip_ratio_low": actor.clip_ratio,
            "clip_ratio_high": actor.clip_ratio,
            "clip_ratio_c": actor.clip_ratio_c,
            "loss_agg_mode": actor.loss_agg_mode,
            "global_batch_info": {},
        }
    )
