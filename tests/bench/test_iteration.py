"""bench/iteration.py's helpers for bench/gpu.sh: the tokenizer cache and the warm-up of the
neighbouring reward widths."""
import importlib.util
import pathlib

import jax
import numpy as np

from rajax.models import bert
from rajax.rewards import RewardModel

_PATH = pathlib.Path(__file__).resolve().parents[2] / "bench" / "iteration.py"
_spec = importlib.util.spec_from_file_location("bench_iteration", _PATH)
it = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(it)


def test_the_cached_tokenizer_is_the_trained_one(tmp_path):
    words = it.PseudoWords(200).words
    trained = it.bert_tokenizer(words, 300, tmp_path)
    files = list(tmp_path.iterdir())
    assert [f.name.startswith("wordpiece_v300_") for f in files] == [True]
    loaded = it.bert_tokenizer(words, 300, tmp_path)
    texts = ["".join(words[j:j + 40]) for j in range(0, 160, 7)]
    assert loaded(texts)["input_ids"] == trained(texts)["input_ids"]
    it.bert_tokenizer(words, 400, tmp_path)  # another vocabulary size is another file
    assert len(list(tmp_path.iterdir())) == 2


def test_warm_up_compiles_the_widths_next_to_the_one_used(tmp_path):
    # A config (5 labels) and a row count (3) of this test's own: the jitted classifier is shared by
    # every model of one config, so another test's compilations must not be counted here.
    cfg = bert.BertConfig(**it.TINY_BERT, num_labels=5)
    words = it.PseudoWords(200).words
    reward = RewardModel(cfg, bert.init(cfg, jax.random.key(0)), [f"l{i}" for i in range(5)],
                         it.bert_tokenizer(words, 300, tmp_path), index=0, sign=-1, batch_size=3)
    chunks = reward.encode(["".join(words[:30])] * 3)
    w = chunks[0][0].shape[1]
    i = reward.buckets.index(w)
    before = reward.fn._cache_size()
    got = it.warm_neighbour_widths(reward, chunks)
    assert got == [reward.buckets[i - 1], reward.buckets[i + 1]]
    assert reward.fn._cache_size() == before + 2
    # A batch at a neighbouring width now runs without compiling.
    z = np.zeros((3, reward.buckets[i + 1]), np.int32)
    reward.fn(reward.params, z, np.ones_like(z))
    assert reward.fn._cache_size() == before + 2
