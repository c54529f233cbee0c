"""rajax.tasks.base: prompts = decode(encode(text)[:P]), padding, and the `datasets`-exact index arithmetic."""
import numpy as np
import pytest
from tiny import CharTok

from rajax import tasks
from rajax.tasks import base


# --- basics -----------------------------------------------------------------------------------
def test_left_pad_and_encode_prompts():
    ids, mask = tasks.left_pad([[5, 6], [7], []], 3, 0)
    np.testing.assert_array_equal(ids, [[0, 5, 6], [0, 0, 7], [0, 0, 0]])
    np.testing.assert_array_equal(mask, [[0, 1, 1], [0, 0, 1], [0, 0, 0]])
    assert ids.dtype == np.int32 and mask.dtype == np.int32
    with pytest.raises(ValueError, match="width"):
        tasks.left_pad([[1, 2, 3, 4]], 3, 0)
    ps = tasks.encode_prompts(["hello world", "ab"], CharTok(), 4, labels=[1, 0])
    assert ps.ids == [[104, 101, 108, 108], [97, 98]] and ps.texts == ["hell", "ab"]
    assert ps.sources == ["hello world", "ab"] and list(ps.labels) == [1, 0]
    sub = ps.select([1])
    assert sub.texts == ["ab"] and list(sub.labels) == [0] and len(sub) == 1
    assert tasks.build_prompts(["hello world"], CharTok(), 5) == ["hello"]
    assert tasks.clean_up_tokenization("I do n't know , he 's here .") == "I don't know, he's here."


def test_split_arithmetic_matches_datasets():
    datasets = pytest.importorskip("datasets")
    n = 103
    ds = datasets.Dataset.from_dict({"i": list(range(n))})
    tr, te = base.hf_train_test_split(n, 0.2, 42)
    sp = ds.train_test_split(test_size=0.2, seed=42)
    assert list(tr) == sp["train"]["i"] and list(te) == sp["test"]["i"]
    assert list(base.hf_shuffle(n, 42)) == ds.shuffle(seed=42)["i"]
    assert base.ratio_count(17395) == 40588 and base.ratio_count(11092) == 25881
