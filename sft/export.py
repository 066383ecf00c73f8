"""Export kept trajectories to LLaMA-Factory: ``sharegpt`` JSON plus ``dataset_info.json`` (DESIGN §3).

    python -m sft.export --config configs/sft/tiny.yaml

A trajectory's response is cut at its mask boundaries: each run of policy tokens (mask 1) becomes a
``gpt`` turn, each run of observation tokens (mask 0, an ``<information>`` block with its
surrounding newlines) an ``observation`` turn, which LLaMA-Factory never trains on. The turns are
decoded from the token ids; :func:`reproducible` checks that re-encoding every piece gives the same
ids, so the registered template (``sft.template``) rebuilds the rollout's stream exactly.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from search_r1.agent.trajectory import Trajectory
from search_r1.config import entry_point, parse_config
from sft.config import DEFAULT_CONFIG, SFTConfig
from sft.generate import read_records
from sft.template import chat_format

DATASET_NAME = "search_r1_sft"
DATASET_FILE = "train.json"


def runs(ids: list[int], mask: list[int]) -> list[tuple[int, list[int]]]:
    """``[(mask value, ids), ...]``: maximal runs of equal mask."""
    out: list[tuple[int, list[int]]] = []
    for tok, m in zip(ids, mask, strict=True):
        if out and out[-1][0] == m:
            out[-1][1].append(tok)
        else:
            out.append((m, [tok]))
    return out


def to_sharegpt(traj: Trajectory, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """One sharegpt example: the user message, then alternating ``gpt``/``observation`` turns."""
    messages = traj.extra["messages"]
    if len(messages) != 1 or messages[0]["role"] != "user":
        raise ValueError(f"{traj.uid}: expected a single user message as the prompt")
    conv = [{"from": "human", "value": messages[0]["content"]}]
    for m, ids in runs(traj.response_ids, traj.response_mask):
        conv.append(
            {"from": "gpt" if m else "observation", "value": tokenizer.decode(ids, skip_special_tokens=False)}
        )
    if conv[-1]["from"] != "gpt":
        raise ValueError(f"{traj.uid}: a training example must end with a policy turn")
    return {"conversations": conv, "uid": traj.uid, "sample_index": traj.sample_index}


def reproducible(traj: Trajectory, tokenizer: PreTrainedTokenizerBase) -> bool:
    """True if the exported text re-encodes to the trajectory's ids piece by piece (prompt included).

    A sampled model can emit a non-canonical tokenisation of its own text; such a trajectory would
    train on ids that differ from what the policy generated, so it is filtered out instead.
    """
    fmt = chat_format(tokenizer)
    prompt = fmt.before + traj.extra["messages"][0]["content"] + fmt.after
    if tokenizer.encode(prompt, add_special_tokens=False) != traj.prompt_ids:
        return False
    for _, ids in runs(traj.response_ids, traj.response_mask):
        text = tokenizer.decode(ids, skip_special_tokens=False)
        if tokenizer.encode(text, add_special_tokens=False) != ids:
            return False
    return True


def dataset_info(file_name: str = DATASET_FILE) -> dict[str, Any]:
    return {
        DATASET_NAME: {
            "file_name": file_name,
            "formatting": "sharegpt",
            "columns": {"messages": "conversations"},
            "tags": {
                "role_tag": "from",
                "content_tag": "value",
                "user_tag": "human",
                "assistant_tag": "gpt",
                "observation_tag": "observation",
            },
        }
    }


def export(trajs: Iterable[Trajectory], tokenizer: PreTrainedTokenizerBase, out_dir: Path) -> Path:
    """Write ``train.json`` and ``dataset_info.json`` into ``out_dir``; returns ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    examples = [to_sharegpt(t, tokenizer) for t in trajs]
    (out_dir / DATASET_FILE).write_text(json.dumps(examples, ensure_ascii=False, indent=1), encoding="utf-8")
    (out_dir / "dataset_info.json").write_text(json.dumps(dataset_info(), indent=1), encoding="utf-8")
    return out_dir


@entry_point
def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(
        SFTConfig, "Export filtered trajectories to LLaMA-Factory sharegpt.", DEFAULT_CONFIG, argv
    )
    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    trajs = [Trajectory.from_dict(r) for r in read_records(cfg.filtered)]
    out = export(trajs, tokenizer, cfg.dataset_dir)
    print(f"[sft.export] {len(trajs)} examples -> {out / DATASET_FILE} (dataset '{DATASET_NAME}')")


if __name__ == "__main__":
    main()
