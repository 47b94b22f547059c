"""`kk.run_strategy` / `kk.run_strategy_batch`: chat messages in, typed results out."""
from __future__ import annotations

from typing import Sequence

from kaggle_kit.engine.chat_template import prompt_ids, validate_messages
from kaggle_kit.engine.registry import current_engine
from kaggle_kit.engine.types import Engine
from kaggle_kit.tts.params import TTSParams
from kaggle_kit.tts.results import StrategyResult
from kaggle_kit.tts.search import Search
from kaggle_kit.tts.strategies import drive


def run_strategy_batch(messages_list: Sequence, *, engine: Engine | None = None, progress: bool | None = None,
                       params: TTSParams | None = None, **kwargs) -> list[StrategyResult]:
    """Run one strategy over many conversations; each round is one engine call for all of them.

    Parameters: `params`, or `TTSParams`' fields as keywords (the seed's names), each with its default and
    meaning there.
    """
    if params is not None and kwargs:
        raise TypeError("give the TTS parameters as params=TTSParams(...) or as keywords, not both")
    p = params if params is not None else TTSParams.of(**kwargs)
    eng = current_engine(engine)
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


def run_strategy(messages, *, engine: Engine | None = None, progress: bool | None = False,
                 params: TTSParams | None = None, **kwargs) -> StrategyResult:
    """Run a TTS strategy on one conversation with the registered engine (or `engine=`)."""
    return run_strategy_batch([messages], engine=engine, progress=progress, params=params, **kwargs)[0]
