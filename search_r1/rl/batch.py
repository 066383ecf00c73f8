"""Trajectories → padded tensors in verl's layout, and the outcome reward placed on them.

Layout (the same as verl's agent loop output, so the loss code reads like verl's)::

    input_ids:     | pad pad p p p p | r r r o o o r r pad pad |
                   |<- prompt_len  ->|<-     response_len    ->|
    response_mask:                   | 1 1 1 0 0 0 1 1  0   0  |   1 = policy token, 0 = observation/pad

Prompts are left-padded, responses right-padded. ``response_mask`` is the trajectory's own mask
(observation tokens are 0), so every loss that aggregates with it gives observations zero weight.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from search_r1.agent.trajectory import Trajectory


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, P + R)
    attention_mask: torch.Tensor  # (B, P + R)
    position_ids: torch.Tensor  # (B, P + R)
    responses: torch.Tensor  # (B, R)
    response_mask: torch.Tensor  # (B, R) float: 1 policy token, 0 observation or padding
    uids: np.ndarray  # (B,) group ids (GRPO groups samples of one prompt by these)

    @property
    def prompt_len(self) -> int:
        return self.input_ids.shape[1] - self.responses.shape[1]

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.position_ids.to(device),
            self.responses.to(device),
            self.response_mask.to(device),
            self.uids,
        )

    def select(self, idx: Sequence[int] | torch.Tensor) -> Batch:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return Batch(
            self.input_ids[idx],
            self.attention_mask[idx],
            self.position_ids[idx],
            self.responses[idx],
            self.response_mask[idx],
            self.uids[idx.numpy()],
        )


def collate(trajs: Sequence[Trajectory], pad_id: int) -> Batch:
    """Pad a list of trajectories into one :class:`Batch` (verl's left/right padding)."""
    P = max(len(t.prompt_ids) for t in trajs)
    R = max(max(len(t.response_ids) for t in trajs), 1)
    B = len(trajs)
    prompts = torch.full((B, P), pad_id, dtype=torch.long)
    responses = torch.full((B, R), pad_id, dtype=torch.long)
    prompt_attn = torch.zeros((B, P), dtype=torch.long)
    response_attn = torch.zeros((B, R), dtype=torch.long)
    response_mask = torch.zeros((B, R), dtype=torch.float32)
    for i, t in enumerate(trajs):
        if len(t.response_mask) != len(t.response_ids):
            raise ValueError(
                f"trajectory {t.uid}: mask length {len(t.response_mask)} != {len(t.response_ids)}"
            )
        prompts[i, P - len(t.prompt_ids) :] = torch.tensor(t.prompt_ids)
        prompt_attn[i, P - len(t.prompt_ids) :] = 1
        n = len(t.response_ids)
        if n:
            responses[i, :n] = torch.tensor(t.response_ids)
            response_attn[i, :n] = 1
            response_mask[i, :n] = torch.tensor(t.response_mask, dtype=torch.float32)
    attention_mask = torch.cat([prompt_attn, response_attn], dim=1)
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    return Batch(
        input_ids=torch.cat([prompts, responses], dim=1),
        attention_mask=attention_mask,
        position_ids=position_ids,
        responses=responses,
        response_mask=response_mask,
        uids=np.array([t.uid for t in trajs], dtype=object),
    )


def place_outcome_reward(scores: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Token-level scores with each sequence's scalar reward on its *last policy token*.

    verl puts the reward on the last response token; when an episode ends on an observation
    (cut by the response budget) that token has mask 0 and GAE would drop the reward, so the
    reward goes on the last mask-1 token instead. A response with no policy token gets nothing.
    """
    out = torch.zeros_like(response_mask, dtype=torch.float32)
    positions = torch.arange(response_mask.shape[1], device=response_mask.device)
    last = torch.where(response_mask > 0, positions, -1).max(dim=1).values
    rows = torch.nonzero(last >= 0).flatten()
    out[rows, last[rows]] = scores[rows].float().to(out.device)
    return out
