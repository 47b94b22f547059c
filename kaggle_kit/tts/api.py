"""`kk.run_strategy` / `kk.run_strategy_batch`: chat messages in, typed results out."""
from __future__ import annotations

from typing import Sequence

from kaggle_kit.chat.messages import prompt_ids, validate_messages
from kaggle_kit.tts.params import TTSParams
from kaggle_kit.tts.results import StrategyResult
from kaggle_kit.tts.search import Search
from kaggle_kit.tts.strategies import drive


def _engine(engine):
    if engine is not None:
        return engine
    from kaggle_kit.engine.registry import ModelRegistry

    return ModelRegistry.get_engine()


def run_strategy_batch(messages_list: Sequence, *, engine=None, progress: bool | None = None,
                       **params) -> list[StrategyResult]:
    """Run one strategy over many conversations; each round is one engine call for all of them.

    Parameters (the seed's names): strategy, scorer, num_trajectories, candidates_per_step,
    beam_size, max_steps, score_aggregation, window_size, temperature, top_p, top_k,
    max_tokens, seed, enable_thinking; plus logprobs, step_stop, min_step_tokens,
    max_step_tokens, stop. See `TTSParams`.
    """
    p = TTSParams.of(**params)
    eng = _engine(engine)
    searches = []
    for i, messages in enumerate(messages_list):
        try:
            ids = prompt_ids(eng.tokenizer, validate_messages(messages), p.enable_thinking)
        except (TypeError, ValueError) as e:
            raise type(e)(f"conversation {i}: {e}") from None
        if len(ids) >= eng.max_model_len:
            raise ValueError(f"conversation {i}: the prompt is {len(ids)} tokens; the model's window is {eng.max_model_len}")
        searches.append(Search(ids, p, eng.max_model_len, eng.eos_token_ids))
    return drive(eng, searches, progress=progress)


def run_strategy(messages, *, engine=None, progress: bool | None = False, **params) -> StrategyResult:
    """Run a TTS strategy on one conversation with the registered engine (or `engine=`)."""
    return run_strategy_batch([messages], engine=engine, progress=progress, **params)[0]
