"""bin/sft end to end on a tiny random GPT-2 and a CSV task, and its one-line errors."""
from tiny import bpe_tokenizer

from rajax.cli import sft as cli_sft

SENTENCES = [
    "the cat sat on the mat and looked at the dog.",
    "a quiet town had a small park near the river.",
    "we cooked dinner for our friends on a warm summer night.",
    "this film was wonderful, the story and the music were great.",
] * 4


def _tiny_hf_gpt2(d):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = bpe_tokenizer(SENTENCES)
    torch.manual_seed(0)
    m = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                   bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id))
    m.save_pretrained(d)
    tok.save_pretrained(d)


def test_bin_sft_end_to_end(tmp_path, capsys):
    import csv

    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from rajax.io import hf

    _tiny_hf_gpt2(str(tmp_path / "base"))
    with open(tmp_path / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text"])
        w.writerows([[s] for s in SENTENCES])
    out = tmp_path / "sft"
    argv = ["--task", "jigsaw", "--policy", str(tmp_path / "base"), "--data", str(tmp_path / "train.csv"),
            "--out", str(out), "--epochs", "4", "--lr", "3e-3", "--batch", "8", "--micro-batch", "4",
            "--max-tokens", "12", "--seed", "0", "--no-progress", "--set", "data.source=file"]
    assert cli_sft.main(argv) == 0, capsys.readouterr().err
    # transformers loads the checkpoint and its tokenizer
    model = GPT2LMHeadModel.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.eos_token == "<|endoftext|>"
    # and it fits the SFT texts better than the base model (the loss went down)
    base = GPT2LMHeadModel.from_pretrained(tmp_path / "base").eval()
    x = torch.tensor([tok(SENTENCES[0], add_special_tokens=False)["input_ids"][:12]])
    with torch.no_grad():
        l_sft, l_base = model(x, labels=x).loss.item(), base(x, labels=x).loss.item()
    assert l_sft < l_base - 0.1, (l_sft, l_base)
    # rajax reads it back too (as bin/train --policy would)
    cfg, params = hf.load(str(out))
    assert cfg.n_layer == 2 and cfg.vocab_size == len(tok)
    # user mistakes: one line on stderr, exit 2
    capsys.readouterr()
    assert cli_sft.main(["--task", "jigsaw", "--policy", str(tmp_path / "missing"), "--data",
                     str(tmp_path / "train.csv"), "--out", str(tmp_path / "x"), "--set", "data.source=file",
                     "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rajax: error: ") and len(err.strip().splitlines()) == 1
    assert cli_sft.main(argv[:-2] + ["--batch", "6", "--set", "data.source=file"]) == 2
    assert "multiple of --micro-batch" in capsys.readouterr().err
