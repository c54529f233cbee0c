"""Shared test helpers: tiny tokenizers and tiny BERT/DistilBERT checkpoints, built offline with
torch + ``save_pretrained`` (no hub access)."""
import csv
import hashlib
import os
import pathlib
import shutil

import numpy as np


def bpe_tokenizer(sentences, vocab_size: int = 300):
    """A GPT-2-style byte-level BPE trained on ``sentences``, with ``<|endoftext|>`` as BOS/EOS/UNK
    (no pad token: ``rajax.tokenizer.load_tokenizer`` sets pad = EOS, as for GPT-2)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(sentences, vocab_size=vocab_size, min_frequency=1, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", unk_token="<|endoftext|>")


WORDS = ("the a movie film was is great good bad awful terrible boring fun plot actor acting story "
         "and but not very really i you it this that love hate stupid idiot nice kind people talk page "
         "edit article please thanks for of to in on with what why how end text").split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PIECES = ["##s", "##ing", "##ed", "##ly", "##of", "##text", "<", ">", "|", ".", ",", "!", "?", "'"]
TOXIC_LABELS = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
IMDB_LABELS = ["NEGATIVE", "POSITIVE"]
TINY = dict(hidden=32, layers=2, heads=2, intermediate=37, max_position=64)

_BUILT: dict = {}


def sample_texts(n, seed=0, lo=1, hi=20):
    """Random sentences over the vocab, some ending in GPT-2's literal EOS string (quirk #13)."""
    rng = np.random.RandomState(seed)
    out = []
    for i in range(n):
        s = " ".join(rng.choice(WORDS, rng.randint(lo, hi + 1)))
        out.append(s + ("<|endoftext|>" if i % 3 == 0 else "."))
    return out


def build_checkpoints(root):
    """Write the tiny checkpoints once per process; returns {name: dir}.

    bert: BertForSequenceClassification, 6 toxic-bert labels, model.safetensors
    distil: DistilBertForSequenceClassification, NEGATIVE/POSITIVE, pytorch_model.bin
    legacy: bert's weights with LayerNorm gamma/beta names, written by hand via safetensors
    """
    if _BUILT:
        return _BUILT
    import torch
    import transformers
    from safetensors.numpy import save_file

    root = str(root)
    vocab_dir = os.path.join(root, "vocab")
    os.makedirs(vocab_dir, exist_ok=True)
    with open(os.path.join(vocab_dir, "vocab.txt"), "w") as f:
        f.write("\n".join(SPECIAL + WORDS + PIECES) + "\n")
    # Not BertTokenizerFast(vocab_file=...): in transformers 5 that silently builds an empty vocab.
    tok = transformers.BertTokenizerFast.from_pretrained(vocab_dir)
    vocab = len(tok)
    torch.manual_seed(0)
    # initializer_range 0.3 (vs 0.02) so the logits are O(1) and the 1e-4 tolerance means something.
    bcfg = transformers.BertConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        max_position_embeddings=64, initializer_range=0.3, id2label=dict(enumerate(TOXIC_LABELS)),
        label2id={l: i for i, l in enumerate(TOXIC_LABELS)})
    bm = transformers.BertForSequenceClassification(bcfg).eval()
    dcfg = transformers.DistilBertConfig(
        vocab_size=vocab, dim=32, n_layers=2, n_heads=2, hidden_dim=37, max_position_embeddings=64,
        initializer_range=0.3, id2label=dict(enumerate(IMDB_LABELS)),
        label2id={l: i for i, l in enumerate(IMDB_LABELS)})
    dm = transformers.DistilBertForSequenceClassification(dcfg).eval()
    out = {n: os.path.join(root, n) for n in ("bert", "distil", "legacy")}
    bm.save_pretrained(out["bert"])
    tok.save_pretrained(out["bert"])
    # transformers 5 has no safe_serialization=False: write the .bin by hand.
    os.makedirs(out["distil"], exist_ok=True)
    dcfg.save_pretrained(out["distil"])
    torch.save(dm.state_dict(), os.path.join(out["distil"], "pytorch_model.bin"))
    tok.save_pretrained(out["distil"])
    os.makedirs(out["legacy"], exist_ok=True)
    sd = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"):
          v.detach().numpy() for k, v in bm.state_dict().items()}
    assert sum(k.endswith("gamma") for k in sd) == 5  # embeddings + 2 per layer
    save_file(sd, os.path.join(out["legacy"], "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(os.path.join(out["bert"], "config.json"), out["legacy"])
    tok.save_pretrained(out["legacy"])
    _BUILT.update(out, models={"bert": bm, "distil": dm, "legacy": bm}, tokenizer=tok)
    return _BUILT


def encode(tok, texts, width=32):
    """Right-padded to a fixed width, so every test reuses the same compiled shapes."""
    return tok(texts, truncation=True, max_length=width, padding="max_length", return_tensors="np")


def torch_logits(model, tok, texts, max_length=64):
    import torch

    enc = tok(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.numpy()


JIGSAW_LABELS = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")


class CharTok:
    """A stand-in tokenizer: one id per character (HF call / batch_decode interface)."""

    def __call__(self, texts, verbose=False):
        return {"input_ids": [[ord(c) for c in t] for t in texts]}

    def batch_decode(self, ids, skip_special_tokens=False, clean_up_tokenization_spaces=False):
        return ["".join(map(chr, x)) for x in ids]


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def cfg_for(task, **over):
    """A preset with dotted overrides given as keyword arguments (``data__path=...``)."""
    from rajax import config as C

    return C.load_config(task, overrides={k.replace("__", "."): v for k, v in over.items()})


def make_kaggle_dir(tmp_path, n=300, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        toxic = int(rng.uniform() < 0.2)
        text = f"comment {i} " + "x" * int(rng.integers(30, 90))
        rows.append([f"id{i}", text, toxic, 0, 0, 0, 0, 0])
    d = tmp_path / "kaggle"
    d.mkdir()
    write_csv(d / "train.csv", ["id", "comment_text", *JIGSAW_LABELS], rows)
    return d, rows


# --- tiny GPT-2 policies, a tiny BERT reward and a text/label CSV (the evaluation and CLI tests) ---
SENTENCES = [
    "the cat sat on the mat and looked at the dog.",
    "a quiet town had a small park near the river.",
    "you are a terrible person and i hate this stupid place!",
    "we cooked dinner for our friends on a warm summer night.",
    "this film was wonderful, the story and the music were great.",
    "what an awful, boring and ugly movie, a total waste of time.",
] * 3


def make_gpt2_tokenizer(d):
    tok = bpe_tokenizer(SENTENCES)
    tok.save_pretrained(d)
    return tok


def make_gpt2(d, tok, seed=0):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    eos = tok.eos_token_id
    m = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=2, n_head=2,
                                   bos_token_id=eos, eos_token_id=eos))
    m.save_pretrained(d)
    tok.save_pretrained(d)
    return m


def make_bert_classifier(d):
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    words = sorted({w.strip(".,!") for s in SENTENCES for w in s.split()} | {"<", "|", ">", "endoftext"})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *"abcdefghijklmnopqrstuvwxyz.,!?'<>|"]
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "vocab.txt"), "w") as f:
        f.write("\n".join(dict.fromkeys(vocab)) + "\n")
    btok = BertTokenizerFast(vocab_file=os.path.join(d, "vocab.txt"))
    torch.manual_seed(1)
    labels = ["toxic", "severe_toxic", "obscene"]
    m = BertForSequenceClassification(BertConfig(
        vocab_size=len(btok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=128, num_labels=3, initializer_range=0.2, id2label=dict(enumerate(labels)),
        label2id={k: i for i, k in enumerate(labels)}, problem_type="multi_label_classification"))
    m.save_pretrained(d)
    btok.save_pretrained(d)


TEST_ROWS = [
    ("you are a terrible person and i hate this place", 1),
    ("the cat sat on the mat and looked at the dog", 0),
    ("what an awful boring and ugly movie", 1),
    ("we cooked dinner for our friends on a warm night", 0),
    ("this stupid film was a total waste of time", 1),
    ("a quiet town had a small park near the river", 0),
    ("i hate this awful stupid story", 1),
    ("the music and the story were great", 0),
    ("you are an ugly terrible cook", 1),
    ("our family visited the lake last summer", 0),
]


def write_text_label_csv(path, rows):
    """A csv with columns text, label."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)


# --- a tiny training world: tokenizer, random GPT-2 policy, random BERT reward, RTP-format prompts ---
TRAIN_WORDS = ("the a cat dog bird runs sleeps eats fast slow very you idiot stupid awful nice kind good "
         "bad happy sad tree house river sun moon walks talks sings loud quiet").split()

TRAIN_TINY = [
    "generation.prompt_tokens=8", "generation.max_new_tokens=6", "generation.min_length=10",
    "train.batch_size=8", "ppo.mini_batch_size=8", "ppo.learning_rate=1e-3",
    "eval.test_size=16", "eval.ppl_num_texts=8", "eval.batch_size=8",
    "train.sample_every=1", "train.checkpoint_every=1",
]


def train_args(world, out, *extra, iterations=2):
    """bin/train arguments for the paper's command shape (`--task rtp --alpha 0.2`) on ``world``."""
    args = ["--task", "rtp", "--alpha", "0.2", "--risk-n", "0", "--risk-rho", "0.5", "--risk-M", "2",
            "--policy", str(world / "policy"), "--reward-model", str(world / "reward"),
            "--data", str(world / "prompts.jsonl"), "--out", str(out), "--iterations", str(iterations),
            "--quiet"]
    for s in TRAIN_TINY:
        args += ["--set", s]
    return args + list(extra)


def wandb_offline_records(run_dir, timeout_s: float = 120.0):
    """The protobuf records of the W&B offline run under ``run_dir``, once its exit record is on disk.

    ``run.finish()`` returns when the service has taken the exit record, but the service keeps the
    log's current 32 KiB block in memory until it closes the run's file, after ``finish()`` and on its
    own schedule: under load (CI) a small run's file can still hold the header alone, so this polls
    until the exit record is readable, then fails naming what it saw.
    """
    import glob
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        paths = glob.glob(os.path.join(str(run_dir), "wandb", "offline-run-*", "run-*.wandb"))
        out = _wandb_log_records(paths[0]) if paths else []
        kinds = [r.WhichOneof("record_type") for r in out]
        if "exit" in kinds:
            return out
        if time.monotonic() > deadline:
            raise AssertionError(f"no W&B exit record under {run_dir} after {timeout_s:.0f} s; records: {kinds}")
        time.sleep(0.2)


def _wandb_log_records(path):
    """The file is a 7-byte header, then LevelDB-log blocks of 32 KiB whose chunks have a 7-byte header
    (crc 4, length 2, type 1; full 1, first 2, middle 3, last 4). Read without network and without
    W&B's own reader (gone from 0.2x). A chunk cut short by a write in progress ends the list."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    pos, buf, block, out = 7, b"", 32768, []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if pos + 7 + n > len(data):
            break
        chunk = data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind == 0:
            continue
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            r = pb.Record()
            r.ParseFromString(buf)
            out.append(r)
            buf = b""
    return out


# Tree hashes (tests/test_faults.py, tests/test_fuzz.py): what a command must leave alone.
class TreeHash(str):
    """The hash of a tree (``tree_hash``); compared with another, a failure lists the paths that differ."""

    def __new__(cls, listing: dict):
        h = hashlib.sha256()
        for k in sorted(listing):
            h.update(k.encode() + b"\0" + listing[k] + b"\0")
        obj = super().__new__(cls, h.hexdigest()[:16])
        obj.listing = listing
        return obj

    def __eq__(self, other):
        return str.__eq__(self, other)

    __hash__ = str.__hash__

    def diff(self, other) -> list[str]:
        a, b = self.listing, other.listing
        return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def tree_hash(root: pathlib.Path) -> TreeHash:
    """One hash of everything under ``root``, links not followed: names, kinds, bytes, link targets
    and the files' modes (a lock file counts, and so does an empty directory)."""
    root = pathlib.Path(root)
    listing = {}
    if os.path.lexists(root):
        for d, dirs, files in os.walk(root, followlinks=False):
            for name in dirs + files:
                p = pathlib.Path(d) / name
                rel = str(p.relative_to(root))
                if p.is_symlink():
                    listing[rel] = b"L " + os.readlink(p).encode()
                elif p.is_dir():
                    listing[rel] = b"D"
                else:
                    listing[rel] = f"F {p.stat().st_mode:o} ".encode() + p.read_bytes()
    return TreeHash(listing)


def unchanged(root: pathlib.Path, before: TreeHash) -> bool:
    """``root`` hashes as ``before`` did; otherwise fail naming the paths that changed."""
    after = tree_hash(root)
    assert after == before, (f"tree hash {before} -> {after}", before.diff(after))
    return True
