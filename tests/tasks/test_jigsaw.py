"""rajax.tasks.jigsaw: the 70/30 train split from the Kaggle CSV and the paper's Jigsaw-Gen test prompts
(docs/paper.md §3.2). The test-set check uses the real GPT-2 tokenizer and test CSV (``shared_data``).
"""
import numpy as np
from tiny import JIGSAW_LABELS, CharTok, cfg_for, make_kaggle_dir, write_csv

from rajax import tasks
from rajax.tasks import files


# --- Jigsaw (docs/paper.md §3.2) -----------------------------------------------------------------------
def test_jigsaw_gen_prompts_from_the_paper_test_csv(shared_data):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(shared_data / "gpt2-tokenizer"))
    test_csv = shared_data / "jigsaw" / "jigsaw_gen_test.csv"
    comments = files.read_table(test_csv)["comment_text"]
    cfg = cfg_for("jigsaw", data__test_path=str(test_csv))
    assert cfg.reward.clean_up_spaces  # the preset decodes as the paper's transformers 4 did
    d = tasks.load(cfg, tok, require=("test",))
    assert d.train is None and len(d.test) == 7708 and int(d.test.labels.sum()) == 3854
    assert sum(len(x) == 8 for x in d.test.ids) == 7707  # one comment ("WTF U....") is only 6 tokens
    for i in np.random.default_rng(0).choice(len(comments), 300, replace=False):  # per row, as docs/paper.md §3 writes it
        ids = tok.encode(comments[i])[:8]
        assert d.test.ids[i] == ids and d.test.texts[i] == tasks.clean_up_tokenization(tok.decode(ids))
    toxic = d.test.labels
    assert d.ppl_texts == [c[:500] for c, y in zip(comments, toxic) if y == 0]  # §4.2
    # Share of prompts that are a prefix of their comment: the 99.1% reported for the paper's prompts (docs/paper.md §6.1)
    # (§6.1) with the transformers-4 cleanup, 99.8% for plain decode(encode(c)[:8]).
    raw = tasks.decode_all(tok, d.test.ids)
    rate = np.mean([c.startswith(p) for c, p in zip(comments, d.test.texts)])
    raw_rate = np.mean([c.startswith(p) for c, p in zip(comments, raw)])
    assert abs(rate - 0.991) < 0.0005 and raw_rate > 0.997, (rate, raw_rate)


def test_jigsaw_train_split_from_kaggle_csv(tmp_path):
    d, rows = make_kaggle_dir(tmp_path)
    test = tmp_path / "jigsaw_gen_test.csv"
    write_csv(test, ["comment_text", *JIGSAW_LABELS, "reward"],
              [["a long toxic comment " * 5, 1, 0, 0, 0, 0, 0, -3.0], ["a long nice comment " * 5, 0, 0, 0, 0, 0, 0, 7.0]])
    cfg = cfg_for("jigsaw", data__path=str(d), data__test_path=str(test), generation__prompt_tokens=12)
    data = tasks.load(cfg, CharTok(), require=("train", "test"))
    long_tox = [r[1] for r in rows if r[2] == 1 and len(r[1]) > 64]
    long_non = [r[1] for r in rows if r[2] == 0 and len(r[1]) > 64]
    k = int(len(long_tox) * 70 / 30)
    assert k < len(long_non)
    assert len(data.train) == len(long_tox) + k
    assert data.train.sources[:len(long_tox)] == long_tox  # every toxic comment > 64 chars, file order
    sampled = data.train.sources[len(long_tox):]
    assert set(sampled) <= set(long_non) and len(set(sampled)) == k
    assert sampled == [t for t in long_non if t in set(sampled)]  # file order
    assert list(data.train.labels) == [1] * len(long_tox) + [0] * k
    assert data.sft_texts == sampled and all(len(t) > 64 for t in data.train.sources)
    assert data.test.texts == [("a long toxic comment " * 5)[:12], ("a long nice comment " * 5)[:12]]
    assert data.ppl_texts == [("a long nice comment " * 5)[:500]]
    again = tasks.load(cfg, CharTok())
    assert again.train.sources == data.train.sources  # seeded
    # the test CSV is also found next to train.csv
    (d / "jigsaw_gen_test.csv").write_bytes(test.read_bytes())
    assert len(tasks.load(cfg_for("jigsaw", data__path=str(d)), CharTok()).test) == 2
