"""rajax.tasks (the registry): data.source selects a task plug-in; a new task is one class and a
preset; prepare() fills placeholders and fails fast in one line."""
import numpy as np
import pytest
from tiny import CharTok, cfg_for

from rajax import config as C
from rajax import tasks
from rajax.core.errors import train_command
from rajax.tasks.base import RawSplits, Task


def test_every_paper_task_and_the_offline_one_are_registered():
    assert tasks.names() == ["file", "hub", "imdb", "jigsaw", "rtp", "synthetic"]
    assert tasks.get("rtp").name == "rtp" and tasks.get("imdb").class_names[1] == "Positive"
    offline = [n for n in tasks.names() if tasks.get(n).offline]
    assert offline == ["synthetic"] and tasks.default_preset() == "synthetic"
    assert tasks.offline_hint() == f"or run the offline task: {train_command()} --task synthetic"
    with pytest.raises(ValueError, match="data.source='web' is not valid; choose one of file, hub, imdb") as e:
        tasks.get("web")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="data.source='web'"):
        tasks.prepare(cfg_for("rtp", data__source="web"), check_hub=False)
    with pytest.raises(ValueError, match="has no name"):
        tasks.register(Task())


class Letters(Task):
    """A task defined outside rajax: prompts are the letters of the alphabet, two per prompt."""

    name = "letters-test"

    def raw(self, cfg):
        texts = ["".join(chr(97 + (i + j) % 26) for j in range(2)) for i in range(26)]
        return RawSplits((texts, np.zeros(26, np.int32)), (texts[:4], None), False, texts, texts[:3],
                         {"source": "the alphabet"})

    def extra_scorers(self, cfg):
        return {"vowels": lambda ts: np.array([sum(c in "aeiou" for c in t) for t in ts], float)}


def test_a_new_task_is_one_class_and_a_registration():
    tasks.register(Letters())
    try:
        cfg = cfg_for("rtp", data__source="letters-test", generation__prompt_tokens=1,
                      eval__ppl_max_chars=1)
        cfg2, task = tasks.prepare(cfg, check_hub=False)
        assert cfg2 is cfg and isinstance(task, Letters)
        d = tasks.load(cfg, CharTok())
        assert len(d.train) == 26 and d.train.texts[:2] == ["a", "b"]  # 1-token prompts (one char each)
        assert d.test.texts == ["a", "b", "c", "d"] and d.ppl_texts == ["a", "b", "c"]
        assert d.info["source"] == "the alphabet" and d.info["data_source"] == "letters-test"
        assert list(task.extra_scorers(cfg)["vowels"](["aei", "xyz"])) == [3.0, 0.0]
    finally:
        tasks._REGISTRY.pop("letters-test")


def test_prepare_fails_fast_in_one_line(tmp_path):
    # The file task needs a path before anything is loaded.
    with pytest.raises(ValueError, match="data.source=file needs data.path"):
        tasks.prepare(cfg_for("rtp", data__source="file"), check_hub=False)
    # A local-looking path that does not exist is named, hub or no hub.
    with pytest.raises(FileNotFoundError, match=f"--policy {tmp_path / 'nope'}: no such file"):
        tasks.prepare(cfg_for("rtp", model__policy=str(tmp_path / "nope")))
    # Hub ids while offline (HF_HUB_OFFLINE=1 in conftest): every flag that needs the hub, and the hint.
    with pytest.raises(ValueError) as e:
        tasks.prepare(C.load_config("rtp"))
    msg = str(e.value)
    assert "\n" not in msg and "--policy gpt2" in msg and "--reward-model unitary/toxic-bert" in msg
    assert "--data (the hub dataset allenai/real-toxicity-prompts)" in msg and msg.endswith("--task synthetic")
    # Jigsaw has no hub source: training without --data is refused; evaluation needs only the test file.
    with pytest.raises(ValueError, match="Kaggle CSVs"):
        tasks.prepare(C.load_config("jigsaw"), check_hub=True)
    assert tasks.get("jigsaw").hub_needs(C.load_config("jigsaw"), require=("test",)) == []
