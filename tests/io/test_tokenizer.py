"""rajax.io.tokenizer: the real GPT-2 tokenizer offline (from ../shared/data), padding, errors (docs/paper.md §3)."""
import pytest

from rajax.io.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def gpt2_tok(shared_data):
    return load_tokenizer(shared_data / "gpt2-tokenizer")


def test_gpt2_ids_and_pad_is_eos(gpt2_tok):
    tok = gpt2_tok
    assert tok.is_fast
    assert tok("Hello world").input_ids == [15496, 995]  # no BOS added
    assert tok.pad_token_id == tok.eos_token_id == 50256
    assert len(tok) == 50257
    assert tok.decode([15496, 995, 50256]) == "Hello world<|endoftext|>"


def test_padding_side(gpt2_tok, shared_data):
    enc = gpt2_tok(["Hello world", "Hello"], padding=True)
    assert enc.input_ids[1] == [50256, 15496] and enc.attention_mask[1] == [0, 1]  # left by default
    right = load_tokenizer(shared_data / "gpt2-tokenizer", padding_side="right")
    enc = right(["Hello world", "Hello"], padding=True)
    assert enc.input_ids[1] == [15496, 50256] and enc.attention_mask[1] == [1, 0]
    with pytest.raises(ValueError, match="padding_side"):
        load_tokenizer(shared_data / "gpt2-tokenizer", padding_side="middle")


def test_vocab_and_merges_only_directory(tmp_path, shared_data):
    """A directory with just vocab.json + merges.txt (+ a config naming GPT2Tokenizer) loads too."""
    src = shared_data / "gpt2-tokenizer"
    for f in ("vocab.json", "merges.txt"):
        (tmp_path / f).write_bytes((src / f).read_bytes())
    (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "GPT2Tokenizer"}')
    tok = load_tokenizer(tmp_path)
    assert tok("Hello world").input_ids == [15496, 995]
    assert tok.pad_token_id == tok.eos_token_id == 50256


def _one_line(e):
    s = str(e.value)
    assert "\n" not in s
    return s


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_tokenizer(tmp_path / "missing", what="--tokenizer")
    assert _one_line(e).startswith("--tokenizer '")
    with pytest.raises(ValueError) as e:  # HF_HUB_OFFLINE=1 (conftest), nothing cached
        load_tokenizer("someone/not-a-cached-tokenizer-xyz")
    assert "hub is unreachable (offline)" in _one_line(e)
    with pytest.raises(ValueError, match="neither tokenizer.json nor vocab.json") as e:
        load_tokenizer(tmp_path)
    _one_line(e)
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ValueError, match="is a file") as e:
        load_tokenizer(tmp_path / "f.txt")
    _one_line(e)


# A child process with the hub online as far as huggingface_hub knows (no HF_HUB_OFFLINE at import),
# so what is measured is rajax's own check, not the test setup's offline flag.
_CHILD = r"""
import json, os, socket, sys, threading, time
from rajax.io import hf
from rajax.io.tokenizer import load_tokenizer
mode = sys.argv[1]
if mode == "hanging":  # a hub that accepts connections and never answers
    srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(16)
    held = []
    threading.Thread(target=lambda: [held.append(srv.accept()) for _ in iter(int, 1)], daemon=True).start()
    os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{srv.getsockname()[1]}"
    os.environ["HF_HUB_OFFLINE"] = "1"  # set after huggingface_hub read its flag at import
out = {}
for name, load, repo in (("tokenizer", load_tokenizer, "someone/tiny-tok"), ("model", hf.load, "someone/not-cached")):
    t = time.time()
    try:
        got = load(repo)
        out[name] = ["ok", type(got).__name__, time.time() - t]
    except Exception as e:
        out[name] = [type(e).__name__ + ": " + str(e), None, time.time() - t]
print(json.dumps(out))
"""


def _child(mode, tmp_path, **env):
    import json
    import os
    import subprocess
    import sys

    e = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT")}
    e.update(HF_HOME=str(tmp_path / "hf_home"), **env)
    p = subprocess.run([sys.executable, "-c", _CHILD, mode], env=e, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def _cache_tokenizer(hf_home, repo_id, src):
    """A hand-built hub cache entry (what a download leaves), so ``repo_id`` loads offline."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    for f in src.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (snap / "config.json").write_text('{"model_type": "gpt2"}')  # AutoTokenizer reads the repo's config too


def test_an_unreachable_hub_fails_within_seconds(tmp_path):
    """The library's loaders on a hub that cannot be reached: one line within seconds (it took 51 s of
    huggingface_hub's retries for the tokenizer), as the CLI's preflight does."""
    got = _child("unreachable", tmp_path, HF_ENDPOINT="http://rajax-test-hub.invalid")
    for name in ("tokenizer", "model"):
        msg, _, seconds = got[name]
        assert "hub is unreachable (offline)" in msg and seconds < 15, (name, got)


def test_hf_hub_offline_set_at_run_time_is_honoured(tmp_path):
    """HF_HUB_OFFLINE=1 set after import, with a hub that would hang: a cached tokenizer loads from the
    cache at once, an uncached model fails at once. This passed before the reachability check too
    (huggingface_hub 1.x reads the variable at each call); it guards that the check, which reads the
    cache itself, still lets a cached hub id load offline."""
    from tiny import SENTENCES, bpe_tokenizer

    src = tmp_path / "tok"
    bpe_tokenizer(SENTENCES).save_pretrained(str(src))
    _cache_tokenizer(tmp_path / "hf_home", "someone/tiny-tok", src)
    got = _child("hanging", tmp_path)
    assert got["tokenizer"][0] == "ok" and got["tokenizer"][2] < 15, got
    assert "hub is unreachable (offline)" in got["model"][0] and got["model"][2] < 15, got
