"""The tiny preset's SFT model, shipped with the repository as the start of the RL tests.

``bash train_sft.sh`` takes about 16 minutes on two cores, and the RL learning test (issue 6) has to
start from its result and still run in minutes. So, as with the tiny base model, the result of the
committed config ships in ``data/models/tiny-sft`` (9 MB). After a tiny run,

    python -m sft.ship            # copies outputs/runs/sft/tiny/merged to data/models/tiny-sft

writes the model files and ``build_info.json``: a key of everything the model is a function of
(the base model's build key, which covers the world and the pretraining config; the SFT config
without its paths; the agent protocol; the retriever that served the teacher), the run's greedy
before/after test EM, its filter report and training loss, and the commit. The shipped model is
used only while its key matches the committed configs. Code is not in the key, as for the base
model: re-run ``train_sft.sh`` and ``sft.ship`` after changing the teacher, the filters or the
export.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

from search_r1.agent.protocol import ProtocolConfig
from search_r1.config import entry_point, load_config, parse_config, to_dict
from search_r1.paths import CONFIG_DIR, FIXTURE_DIR, REPO_ROOT
from search_r1.retrieval.config import BuildConfig, ServerConfig
from sft.config import DEFAULT_CONFIG, SFTConfig

SHIPPED_SFT_MODEL = FIXTURE_DIR / "models" / "tiny-sft"
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
)


# Fields that say where things are or how to reach them, or what to check afterwards: they do not
# change what the student is trained on, so they are not part of the key.
NOT_RECIPE = {
    "": ("model", "world_dir", "run_dir", "check"),
    "generate": ("retriever_url", "retriever_token"),
    "teacher": ("base_url", "api_key_env", "max_retries", "timeout_s"),
}
# Index settings that change what the dense retriever returns (not which backends are built, threads, ...).
INDEX_RECIPE = ("encoder", "faiss_factory", "train_size", "embedding_dtype")


def recipe(cfg: SFTConfig) -> dict:
    """The SFT config without the fields of ``NOT_RECIPE``."""
    params = to_dict(cfg)
    for section, keys in NOT_RECIPE.items():
        for k in keys:
            (params[section] if section else params).pop(k)
    return params


def sft_key(cfg: SFTConfig) -> str:
    """Hash of what the SFT model is built from. Paths and the retriever's URL are left out (they
    say where, not what); the retriever's backend, top-k and index settings are in, because the
    student learns the observations of the retriever that served its teacher."""
    info = Path(cfg.model) / "build_info.json"
    if not info.exists():
        raise FileNotFoundError(
            f"{info}: sft.ship keys on the base model's build key (the tiny base has one)"
        )
    protocol = Path(cfg.generate.protocol)
    server = to_dict(load_config(ServerConfig, CONFIG_DIR / "retriever" / "default.yaml"))
    index = to_dict(load_config(BuildConfig, CONFIG_DIR / "retriever" / "build_world.yaml"))
    for k in ("device", "batch_size"):
        index["encoder"].pop(k)
    blob = {
        "base_key": json.loads(info.read_text())["key"],
        "sft": recipe(cfg),
        "protocol": to_dict(
            ProtocolConfig.from_yaml(protocol if protocol.is_absolute() else REPO_ROOT / protocol)
        ),
        "retriever": {k: server[k] for k in ("backend", "topk", "reranker")},
        "index": {k: index[k] for k in INDEX_RECIPE},
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def shipped_sft_model(cfg: SFTConfig, shipped: Path = SHIPPED_SFT_MODEL) -> Path | None:
    """``shipped`` when it was built from ``cfg`` (its key matches), else None."""
    info = shipped / "build_info.json"
    if info.exists() and json.loads(info.read_text())["key"] == sft_key(cfg):
        return shipped
    return None


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def ship(cfg: SFTConfig, out: Path = SHIPPED_SFT_MODEL) -> dict:
    """Copy ``cfg``'s merged model and its evidence to ``out``; returns the build info written."""
    merged, evaluation = cfg.merged_dir, cfg.root / "eval_test.json"
    for need in (merged / "model.safetensors", evaluation, cfg.filter_report):
        if not need.exists():
            raise FileNotFoundError(
                f"{need} is missing: run `bash train_sft.sh` (with its test EM check) first"
            )
    out.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        shutil.copy2(merged / name, out / name)
    results = json.loads(evaluation.read_text())["results"]
    train_results = merged / "train_results.json"
    info = {
        "key": sft_key(cfg),
        "config": recipe(cfg),
        "commit": _commit(),
        "test_em": {Path(model).name: r["em"] for model, r in results.items()},
        "test_questions": next(iter(results.values()))["questions"],
        "filter_report": json.loads(cfg.filter_report.read_text()),
        "train": json.loads(train_results.read_text()) if train_results.exists() else {},
    }
    (out / "build_info.json").write_text(json.dumps(info, indent=1))
    return info


@entry_point
def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(
        SFTConfig, "Ship a finished tiny SFT run's merged model to data/models/tiny-sft", DEFAULT_CONFIG, argv
    )
    info = ship(cfg)
    em = ", ".join(f"{name} {v:.4f}" for name, v in info["test_em"].items())
    print(f"[sft.ship] {cfg.merged_dir} -> {SHIPPED_SFT_MODEL} (key {info['key']}); test EM: {em}")


if __name__ == "__main__":
    main()
