"""Packing vLLM's logprobs into arrays: flat and dict forms agree, no duplicates."""
import numpy as np
from vllm.logprobs import FlatLogprobs, Logprob

from kaggle_kit.engine.vllm_engine import _pack_flat


def test_flat_form_dedups_the_sampled_token():
    # position 0: sampled 5 is inside the top-2, so vLLM lists it twice; position 1: sampled 9 is outside
    flat2 = FlatLogprobs(start_indices=[0, 3], end_indices=[3, 6],
                         token_ids=[5, 5, 7, 9, 1, 2], logprobs=[-0.1, -0.1, -2.4, -3.0, -0.2, -1.9],
                         ranks=[1, 1, 2, 5, 1, 2], decoded_tokens=[None] * 6)
    chosen, ids, lps = _pack_flat([5, 9], flat2)
    assert chosen.tolist() == [-0.1, -3.0]
    assert ids.tolist() == [[5, 7, -1], [9, 1, 2]]
    assert np.isnan(lps[0, 2]) and lps[1].tolist() == [-3.0, -0.2, -1.9]
    dicts = [{5: Logprob(-0.1), 7: Logprob(-2.4)}, {9: Logprob(-3.0), 1: Logprob(-0.2), 2: Logprob(-1.9)}]
    c2, i2, l2 = _pack_flat([5, 9], dicts)
    assert np.array_equal(c2, chosen) and np.array_equal(i2, ids) and np.allclose(l2, lps, equal_nan=True)
