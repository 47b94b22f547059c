"""Message validation, chat-template rendering and thinking separation."""
import pytest

from kaggle_kit.engine.chat_template import ThinkSplitter, prompt_ids, render_prompt, split_thinking, validate_messages
from kaggle_kit.chat.types import ChatOptions


@pytest.mark.parametrize("messages, exc, match", [
    ([], ValueError, "messages is empty"),
    ("hello", TypeError, "must be a list"),
    ([{"role": "wizard", "content": "x"}], ValueError, "unknown role 'wizard'"),
    ([{"role": "user", "content": ["x"]}], TypeError, "content must be a string"),
    ([{"role": "user"}], TypeError, "content must be a string"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], ValueError, "end with a user message"),
])
def test_bad_messages_are_clear_errors(messages, exc, match):
    with pytest.raises(exc, match=match):
        validate_messages(messages)


def test_unknown_option_lists_the_known_ones():
    with pytest.raises(TypeError, match="chat options are: max_tokens"):
        ChatOptions.of(max_token=5)
    with pytest.raises(ValueError, match="max_tokens"):
        ChatOptions.of(max_tokens=0)


def test_thinking_is_never_fed_back():
    msgs = validate_messages([
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "<think>\nsecret plan\n</think>\n\nanswer one"},
        {"role": "user", "content": "q2"},
    ])
    assert msgs[1]["content"] == "answer one"


@pytest.mark.parametrize("text, thinking, answer", [
    ("<think>\nplan\n</think>\n\nThe answer.", "plan", "The answer."),
    ("<think>\n\n</think>\n\nDirect.", "", "Direct."),
    ("No tags here.", "", "No tags here."),
    ("<think>never closed", "never closed", ""),
    ("  leading space kept", "", "  leading space kept"),
])
def test_split_thinking(text, thinking, answer):
    assert split_thinking(text) == (thinking, answer)


def test_streamed_split_matches_whole_split_at_every_cut():
    text = "<think>\nweigh options </thin k> still thinking\n</think>\n\nUse <b>shared</b> memory.\n\nDone."
    whole = split_thinking(text)
    for cut in range(1, len(text)):
        for step in (1, 3, 7):
            s = ThinkSplitter()
            pieces = [text[:cut]] + [text[i:i + step] for i in range(cut, len(text), step)]
            answer = "".join(s.feed(p) for p in pieces) + s.finish()
            assert (s.thinking.strip(), answer) == whole, (cut, step)


def _template_rendering(folder, messages, enable_thinking):
    """Qwen3's chat template rendered straight from its tokenizer_config.json, the way
    transformers renders chat templates (jinja2 with trim_blocks and lstrip_blocks)."""
    import json
    from pathlib import Path

    import jinja2

    template = json.loads((Path(folder) / "tokenizer_config.json").read_text())["chat_template"]
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    return env.from_string(template).render(messages=messages, add_generation_prompt=True,
                                            enable_thinking=enable_thinking, tools=None)


CONVERSATIONS = {
    "user": [{"role": "user", "content": "Optimise relu."}],
    "system+user": [{"role": "system", "content": "You are a CUDA expert."}, {"role": "user", "content": "Optimise relu."}],
    "multi-turn": [{"role": "system", "content": "S"}, {"role": "user", "content": "q1"},
                   {"role": "assistant", "content": "a1\n\nwith a blank line"}, {"role": "user", "content": "q2"}],
    "history with thinking": [{"role": "user", "content": "q1"},
                              {"role": "assistant", "content": "<think>\nplan\n</think>\n\nanswer one"},
                              {"role": "user", "content": "q2"}],
}


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("thinking", [False, True])
def test_rendering_equals_qwen3s_own_template(engine, tiny_model_dir, name, thinking):
    """What we send (validated messages through vLLM's tokenizer) == the template's own rendering."""
    raw = CONVERSATIONS[name]
    ours = render_prompt(engine.tokenizer, validate_messages(raw), enable_thinking=thinking)
    assert ours == _template_rendering(tiny_model_dir, raw, thinking)
    assert ours.endswith("<|im_start|>assistant\n" + ("" if thinking else "<think>\n\n</think>\n\n"))
    assert "plan" not in ours  # earlier thinking is never sent


def test_qwen3_tokens_and_ids(engine):
    from kaggle_kit.tiny import tokenizer as q3

    tok = engine.tokenizer
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert render_prompt(tok, msgs, enable_thinking=True) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n")
    ids = prompt_ids(tok, msgs, enable_thinking=False)
    # Qwen3's own ids: the special tokens come from the template, never added again.
    assert ids[0] == q3.IM_START_ID and ids.count(q3.IM_END_ID) == 2
    assert q3.THINK_ID in ids and q3.END_THINK_ID in ids
    assert tok.eos_token_id == q3.IM_END_ID and q3.IM_END_ID in engine.eos_token_ids
    assert len(tok) == 151669 and engine.llm.llm_engine.model_config.get_vocab_size() == q3.VOCAB_SIZE
    assert tok.decode(ids) == render_prompt(tok, msgs, enable_thinking=False)
    # Qwen3's BPE, not a small one: a kernel source costs about 0.4 tokens per character.
    from kernels_eval.problems import SOLUTIONS

    source = (SOLUTIONS / "softmax_cuda.py").read_text()
    assert len(tok.encode(source, add_special_tokens=False)) == 748
