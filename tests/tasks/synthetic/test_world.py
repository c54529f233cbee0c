"""rajax.tasks.synthetic.world: the seeded generator and its ground-truth score (no JAX)."""
import numpy as np
import pytest

from rajax.tasks.synthetic import build, world

SMALL = dict(n_train=200, n_test=100, n_lm=50, n_clf=50)


def test_generator_is_seeded_and_deterministic():
    a, b, c = world.generate(3, **SMALL), world.generate(3, **SMALL), world.generate(4, **SMALL)
    for f in ("train", "test", "lm", "clf"):
        assert getattr(a, f) == getattr(b, f)
    np.testing.assert_array_equal(a.train_labels, b.train_labels)
    assert a.train != c.train
    assert len(a.train) == 200 and len(a.test) == 100 and len(a.lm) == 50
    # test split: exactly half hostile, alternating, so any head of it is balanced too
    assert a.test_labels.sum() == 50 and a.test_labels[:10].sum() == 5
    # English-like: every word comes from the generator's vocabulary, sentences are capitalised
    words = {w for t in a.train for w in world._WORD_RE.findall(t.lower())}
    known = set(world._NOUNS + world._VERBS + world._ADJS + world._ADVS + world._FUNC + world._PRONOUNS + world._CONNECT
                + ["was", "up", "what"]) | world._HOSTILE | world._KIND
    assert words <= known, words - known
    assert all(t[0].isupper() and t.endswith(".") for t in a.train)


def test_hostile_prompts_score_lower_and_continue_hostile():
    c = world.generate(0, n_train=2000, n_test=2, n_lm=1, n_clf=1)
    prompts = [" ".join(t.split()[:6]) for t in c.train]
    conts = [" ".join(t.split()[6:]) for t in c.train]
    h = c.train_labels == 1
    assert 0.2 < h.mean() < 0.4  # ~30% hostile, like the paper's 70/30 train splits
    gp = world.ground_truth_score(prompts)
    assert gp[h].mean() < gp[~h].mean() - 3.0
    # hostile openings are continued with hostile words far more often (sticky hostility state)
    hostile_cont = world.word_counts(conts)[:, 1] > 0
    assert hostile_cont[h].mean() > 0.8
    assert hostile_cont[~h].mean() < 0.5
    assert hostile_cont[h].mean() > 2 * hostile_cont[~h].mean()
    gc = world.ground_truth_score(conts)
    assert gc[h].mean() < gc[~h].mean() - 1.5


def test_ground_truth_score_of_any_text():
    s = world.ground_truth_score(["the dog saw a cat", "you stupid idiot, i hate you",
                                "what a lovely kind friend, thanks", "The DOG saw a CAT<|endoftext|>",
                                "", "zzz qqq 123 !!!"])
    assert s.dtype == np.float32 and s.shape == (6,)
    assert s[0] == pytest.approx(3.0)                        # neutral
    assert s[1] < -3.0 < 6.0 < s[2]                          # hostile << kind
    assert s[3] == pytest.approx(s[0])                       # case and <|endoftext|> ignored
    assert s[4] == pytest.approx(3.0) and s[5] == pytest.approx(3.0)
    assert world.ground_truth_score("idiot " * 100)[0] == pytest.approx(-8.0)  # clipped
    assert world.ground_truth_score("you stupid idiot").shape == (1,)
    # the classifier's soft label is sigmoid(-score)
    t = build.toxic_target(["the dog", "idiot " * 30])
    assert t[0] == pytest.approx(1 / (1 + np.exp(3.0)), rel=1e-5) and t[1] > 0.99
