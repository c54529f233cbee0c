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
