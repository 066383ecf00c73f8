"""Rewards and answer metrics: ``compute_score`` (verl), EM / cover-EM / F1 / ROUGE-L, format reward."""

from search_r1.rewards.score import REWARDS, compute_score, register_reward

__all__ = ["REWARDS", "compute_score", "register_reward"]
