"""Tiny randomly initialised models and a small trained tokenizer, written to folders for tests."""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A nurse and a doctor walked into the hospital on Monday morning.",
    "Who was the engineer? The answer cannot be determined from the context.",
    "My grandfather and my grandson went fishing by the river last weekend.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "Context: two neighbours talked. Question: who was rude? Answer: unknown",
] * 20

ARCHITECTURES = ("llama", "mistral", "qwen2", "gemma", "phi3", "gpt2", "opt")


def make_tokenizer(folder: Path):
    """A byte-level BPE tokenizer with SmolLM2-style special tokens and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return tokenizer


def tiny_config(arch: str, vocab_size: int):
    import transformers as tf

    common = dict(vocab_size=vocab_size, bos_token_id=0, eos_token_id=2, pad_token_id=0)
    decoder = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        **common,
    )
    if arch == "llama":
        return tf.LlamaConfig(tie_word_embeddings=True, **decoder)
    if arch == "mistral":
        return tf.MistralConfig(**decoder)
    if arch == "qwen2":
        return tf.Qwen2Config(**decoder)
    if arch == "gemma":
        return tf.GemmaConfig(head_dim=16, **decoder)
    if arch == "gemma2":  # its logits are capped after the output head, at 0.5 so the cap shows
        return tf.Gemma2Config(head_dim=16, final_logit_softcapping=0.5, **decoder)
    if arch == "phi3":
        return tf.Phi3Config(**decoder)
    if arch == "gpt2":
        return tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=256, **common)
    if arch == "opt":
        return tf.OPTConfig(
            hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=256, word_embed_proj_dim=64, **common,
        )
    raise ValueError(arch)


def make_tiny_model(folder: Path, arch: str = "llama", seed: int = 0) -> Path:
    """Write a tiny random causal LM of `arch` with the test tokenizer into `folder`."""
    import torch
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer(folder)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, len(tokenizer)))
    # Random init at std 0.02 gives nearly flat predictions; larger weights make scores differ.
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.2)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def probes_only(limit: int, suite: str = "builtin") -> str:
    """The end of a plan that only probes `limit` items per category of `suite` (the built-in
    one by default). The tiny random models answer at chance: the competence guard would fail
    every variant."""
    return f"""
[probes]
suites = ["{suite}"]
limit = {limit}

[perplexity]
enabled = false

[profile]
enabled = false

[gate]
competence = false
"""
