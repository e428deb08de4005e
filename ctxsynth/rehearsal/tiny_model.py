"""A tiny LLaMA base model built from a config (no download): the rehearsal's stand-in for the paper's students,
meta-llama/Llama-3.1-8B and THUDM/LongAlign-7B-64k-base.

It keeps what the pipeline branches on in those checkpoints and shrinks the rest: no chat template (a base model, so
`chat_template: model` is refused and `longalign` is needed), LLaMA-2's special tokens with a BOS added on encode,
bfloat16 weights in two safetensors shards with an index (fetch_model copies such a directory as it is), and a
generation_config. The tokenizer is byte-level BPE without merges: every byte is a token, so any text encodes.
The bytes written are a function of `seed` (the configs are rewritten without the `transformers_version` that
save_pretrained stamps in, so a transformers release does not change them), so the committed copy in
inputs/models/tiny-llama-base can be checked against a fresh build.

    python -m ctxsynth.rehearsal.tiny_model inputs/models/tiny-llama-base
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

UNK, BOS, EOS = "<unk>", "<s>", "</s>"  # LLaMA-2's ids 0, 1, 2
SPECIAL_TOKENS = (UNK, BOS, EOS)
MAX_POSITIONS = 16384  # room for the rehearsal's packed rows and evaluation prompts (4096 tokens)
# About 54 KB of bf16 weights: this limit splits them into exactly two shards.
MAX_SHARD_SIZE = "30KB"
README = (
    "A tiny LLaMA base model (2 layers, hidden 32, bf16, no chat template), the rehearsal's stand-in for the "
    "paper's base students; random weights, built from a config by "
    "`python -m ctxsynth.rehearsal.tiny_model inputs/models/tiny-llama-base`.\n"
)


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(symbol, len(vocab))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    # LLaMA tokenizers prepend BOS on every encode; the pipeline must pass add_special_tokens=False after a chat
    # template that writes its own BOS, and the stand-in should catch it if it does not.
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BOS, eos_token=EOS, unk_token=UNK, model_max_length=MAX_POSITIONS
    )


def _write_model(directory: Path, seed: int) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer()
    bos_id, eos_id = tokenizer.convert_tokens_to_ids([BOS, EOS])
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        dtype="bfloat16",
    )
    # A forked RNG: building the model must not move the caller's torch random state (tests build it mid-run).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(bos_token_id=bos_id, eos_token_id=eos_id)
    model.save_pretrained(directory, max_shard_size=MAX_SHARD_SIZE)
    tokenizer.save_pretrained(directory)
    for name in ("config.json", "generation_config.json"):  # the only bytes that named the installed transformers
        path = directory / name
        config_dict = json.loads(path.read_text(encoding="utf-8"))
        config_dict.pop("transformers_version", None)
        path.write_text(json.dumps(config_dict, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (directory / "README.md").write_text(README, encoding="utf-8")


def build_tiny_base_llama(directory: os.PathLike | str, seed: int = 0) -> Path:
    """Write the model to `directory` (replacing a previous build there) and return its path."""
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()) and not (directory / "config.json").is_file():
        raise FileExistsError(f"{directory} is not empty and holds no model: refusing to replace it")
    directory.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory.parent, prefix=f".{directory.name}-") as work:
        staged = Path(work) / "model"
        staged.mkdir()
        _write_model(staged, seed)
        # safetensors files come out owner-only and the staging directory 0700: make the build readable as any
        # checkout would be.
        for path in staged.iterdir():
            path.chmod(0o644)
        staged.chmod(0o755)
        if directory.exists():
            shutil.rmtree(directory)  # a previous build: stale shards must not survive a change of shard count
        os.replace(staged, directory)
    return directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = build_tiny_base_llama(args.directory, args.seed)
    print(f"tiny LLaMA base model written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
