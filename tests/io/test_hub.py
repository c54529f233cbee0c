"""rajax.io.hub: one resolver for local paths and hub ids, one state-dict reader, the preflight."""
import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from rajax.io import hub


def test_resolve_local_paths_and_hub_ids_in_one_line(tmp_path):
    assert hub.resolve(tmp_path) == tmp_path
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ValueError, match=r"--policy '.*f.txt': is a file; pass the checkpoint directory"):
        hub.resolve(tmp_path / "f.txt", what="--policy")
    with pytest.raises(FileNotFoundError, match=r"^--ref '\./nope/deeper': no such directory$"):
        hub.resolve("./nope/deeper", what="--ref")
    # HF_HUB_OFFLINE=1 (conftest): an uncached hub id says so, in one line.
    with pytest.raises(ValueError) as e:
        hub.resolve("someone/not-cached", what="--policy")
    assert str(e.value) == ("--policy 'someone/not-cached': not a local directory and the Hugging Face hub is "
                            "unreachable (offline); pass a local checkpoint directory")
    with pytest.raises(ValueError, match="nor a valid Hugging Face hub id"):
        hub.resolve("bad id with spaces")
    assert hub.looks_local("/abs") and hub.looks_local("~/x") and hub.looks_local("a/b/c")
    assert not hub.looks_local("gpt2") and not hub.looks_local("owner/name")


def test_read_state_dict_every_layout(tmp_path):
    w = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "b.bias": np.ones(2, np.float32)}
    one = tmp_path / "one"
    one.mkdir()
    save_file(w, one / "model.safetensors")
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    save_file({"a.weight": w["a.weight"]}, sharded / "model-00001-of-00002.safetensors")
    save_file({"b.bias": w["b.bias"]}, sharded / "model-00002-of-00002.safetensors")
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a.weight": "model-00001-of-00002.safetensors", "b.bias": "model-00002-of-00002.safetensors"}}))
    torch = pytest.importorskip("torch")
    binary = tmp_path / "bin"
    binary.mkdir()
    torch.save({k: torch.tensor(v, dtype=torch.float64) for k, v in w.items()}, binary / "pytorch_model.bin")
    for d in (one, sharded, binary):
        got = hub.read_state_dict(d)
        assert set(got) == set(w), d
        for k in w:
            np.testing.assert_array_equal(got[k], w[k])
            assert got[k].dtype == np.float32
    with pytest.raises(ValueError, match=r"--policy 'x': no model.safetensors"):
        hub.read_state_dict(tmp_path, what="--policy", name="x")
    with pytest.raises(ValueError, match="no config.json"):
        hub.read_config(tmp_path, what="--policy")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is unreadable"):
        hub.read_config(tmp_path)


def test_preflight_names_missing_paths_and_what_needs_the_hub(tmp_path, monkeypatch):
    hub.preflight([("--policy", str(tmp_path)), ("--data", None)], [])  # all local: nothing to say
    with pytest.raises(FileNotFoundError, match=r"^--data /no/such/file.jsonl: no such file or directory$"):
        hub.preflight([("--data", "/no/such/file.jsonl")], [])
    with pytest.raises(FileNotFoundError, match="--test-path test.csv"):
        hub.preflight([("--test-path", "test.csv")], [])
    with pytest.raises(ValueError) as e:
        hub.preflight([("--policy", "gpt2"), ("--data", "someone/data")], ["--data (a hub dataset)"],
                      hint="or run something offline")
    assert str(e.value) == ("the Hugging Face hub is unreachable and these need it: --data (a hub dataset), "
                            "--policy gpt2, --data someone/data; pass local paths with those flags, "
                            "or run something offline")
    monkeypatch.setattr(hub, "reachable", lambda timeout=3.0: True)
    hub.preflight([("--policy", "gpt2")], ["--data (a hub dataset)"])  # reachable: no error
    assert hub.error("--x", "n", "why") == "--x 'n': why" and hub.error(None, "n", "why") == "'n': why"


def test_the_preflight_honours_hf_endpoint(monkeypatch):
    tried = []

    def connect(addr, timeout=None):
        tried.append(addr)
        raise OSError("unreachable")

    monkeypatch.setattr(hub.socket, "create_connection", connect)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.example:8080")
    assert hub.endpoint() == ("mirror.example", 8080) and not hub.reachable()
    with pytest.raises(ValueError, match="the Hugging Face hub mirror mirror.example is unreachable"):
        hub.preflight([("--policy", "someone/model")], [])
    monkeypatch.delenv("HF_ENDPOINT")
    assert hub.endpoint() == ("huggingface.co", 443)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tried.clear()
    assert not hub.reachable() and tried == []  # offline: not even tried
