"""Message validation, chat-template rendering and thinking separation."""
import pytest

from kaggle_kit.chat.messages import ThinkSplitter, prompt_ids, render_prompt, split_thinking, validate_messages
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


def test_template_renders_like_qwen3(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert render_prompt(tok, msgs, enable_thinking=True) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n")
    assert render_prompt(tok, msgs, enable_thinking=False).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    ids = prompt_ids(tok, msgs, enable_thinking=False)
    for special in ("<|im_start|>", "<|im_end|>", "<think>", "</think>"):
        assert tok.convert_tokens_to_ids(special) in ids
    # Special tokens come from the template, not added again by the tokenizer.
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert tok.decode(ids) == render_prompt(tok, msgs, enable_thinking=False)
