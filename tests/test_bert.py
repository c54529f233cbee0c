"""BERT/DistilBERT classifiers vs transformers' PyTorch models (float32), loaders and saver.

The tiny checkpoints are built here with torch + ``save_pretrained`` (no hub access) and shared with
tests/test_rewards.py through ``build_checkpoints``.
"""
import json
import os
import shutil

import numpy as np
import pytest

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


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory):
    return build_checkpoints(tmp_path_factory.mktemp("bert_ckpts"))


@pytest.fixture(scope="session")
def jit_apply():
    import jax

    from rajax.models import bert

    return jax.jit(bert.apply, static_argnums=0)


@pytest.mark.parametrize("name", ["bert", "distil", "legacy"])
def test_parity_with_torch(ckpts, jit_apply, name):
    from rajax.models import bert

    cfg, params, labels, tok = bert.load_classifier(ckpts[name])
    assert cfg.arch == ("distilbert" if name == "distil" else "bert")
    assert (cfg.hidden, cfg.layers, cfg.heads, cfg.intermediate, cfg.max_position) == (32, 2, 2, 37, 64)
    assert labels == (IMDB_LABELS if name == "distil" else TOXIC_LABELS)
    model = ckpts["models"][name]
    texts = sample_texts(6, seed=1)
    ref = torch_logits(model, tok, texts)
    assert np.abs(ref).max() > 0.3  # the comparison is not between near-zero numbers
    # Padded batch: the texts have different lengths, so most rows carry [PAD].
    enc = encode(tok, texts)
    assert (enc["attention_mask"] == 0).any()
    got = np.asarray(jit_apply(cfg, params, enc["input_ids"], enc["attention_mask"]))
    assert got.shape == (6, cfg.num_labels) and got.dtype == np.float32
    assert np.abs(got - ref).max() <= 1e-4
    # Unpadded (no mask at all).
    ids = np.asarray(tok(texts[0])["input_ids"])[None]
    one = np.asarray(jit_apply(cfg, params, ids))
    assert np.abs(one - ref[0]).max() <= 1e-4


def test_legacy_names_give_same_params(ckpts):
    import jax

    from rajax.models import bert

    a = bert.load_classifier(ckpts["bert"])[1]
    b = bert.load_classifier(ckpts["legacy"])[1]
    assert jax.tree.all(jax.tree.map(lambda x, y: bool((x == y).all()), a, b))


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_save_classifier_loads_in_transformers(ckpts, jit_apply, tmp_path, arch):
    import jax
    import transformers

    from rajax.models import bert

    labels = TOXIC_LABELS if arch == "bert" else ["x", "y"]
    # Same shapes as the loaded checkpoints, so the jitted apply is reused (no new compile).
    cfg = bert.BertConfig(arch=arch, vocab_size=len(ckpts["tokenizer"]), num_labels=len(labels), **TINY)
    params = bert.init(cfg, jax.random.key(1))
    # Scale up the random init so logits are O(1) (BERT's 0.02 init gives ~1e-3 logits).
    params = jax.tree.map(lambda x: x * 10 if x.ndim == 2 else x, params)
    path = bert.save_classifier(str(tmp_path / arch), cfg, params, labels, ckpts["tokenizer"])
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(path).eval()
    assert type(hf).__name__ == ("BertForSequenceClassification" if arch == "bert"
                                 else "DistilBertForSequenceClassification")
    texts = sample_texts(6, seed=2)
    ref = torch_logits(hf, ckpts["tokenizer"], texts)
    enc = encode(ckpts["tokenizer"], texts)
    got = np.asarray(jit_apply(cfg, params, enc["input_ids"], enc["attention_mask"]))
    assert np.abs(ref).max() > 0.3
    assert np.abs(got - ref).max() <= 1e-4
    cfg2, params2, labels2, tok2 = bert.load_classifier(path)
    assert cfg2 == cfg and labels2 == labels and tok2("the movie")["input_ids"] == \
        ckpts["tokenizer"]("the movie")["input_ids"]
    assert jax.tree.all(jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), params, params2))


def test_bf16_close_to_f32(ckpts, jit_apply):
    from rajax.models import bert

    cfg, params, _, tok = bert.load_classifier(ckpts["bert"])
    enc = encode(tok, sample_texts(6, seed=3))
    f32 = np.asarray(jit_apply(cfg, params, enc["input_ids"], enc["attention_mask"]))
    b16 = np.asarray(jit_apply(cfg.replace(dtype="bfloat16"), params, enc["input_ids"], enc["attention_mask"]))
    assert b16.dtype == np.float32
    assert np.abs(b16 - f32).max() <= 0.05 * max(1.0, np.abs(f32).max())


def test_loader_errors(ckpts, tmp_path):
    from safetensors.numpy import load_file, save_file

    from rajax.models import bert

    with pytest.raises(ValueError, match="--reward-model '/nonexistent/dir': no such directory"):
        bert.load_classifier("/nonexistent/dir")
    # HF_HUB_OFFLINE=1 (conftest) and not cached: one clear line, naming the option.
    with pytest.raises(ValueError, match="--tox 'rajax-tests/not-a-model': not a local directory") as e:
        bert.load_classifier("rajax-tests/not-a-model", what="--tox")
    assert "\n" not in str(e.value)
    # A checkpoint without its classification head (e.g. an MLM base model).
    d = tmp_path / "nohead"
    d.mkdir()
    shutil.copy(os.path.join(ckpts["bert"], "config.json"), d)
    sd = load_file(os.path.join(ckpts["bert"], "model.safetensors"))
    save_file({k: v for k, v in sd.items() if not k.startswith("classifier")}, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match="no classification head"):
        bert.load_classifier(str(d))
    # A config that is not BERT-like.
    c = json.load(open(os.path.join(ckpts["bert"], "config.json")))
    c["model_type"] = "gpt2"
    json.dump(c, open(d / "config.json", "w"))
    with pytest.raises(ValueError, match="not a BERT or DistilBERT"):
        bert.load_classifier(str(d))
    with pytest.raises(ValueError, match="arch must be"):
        bert.BertConfig(arch="roberta")


def test_hub_id_from_offline_cache(ckpts, tmp_path, monkeypatch):
    """A hub id resolves through huggingface_hub's cache when HF_HUB_OFFLINE=1 (no network)."""
    import huggingface_hub.constants as hc

    from rajax.models import bert

    snap = tmp_path / "models--rajax-tests--tiny-distil" / "snapshots" / ("0" * 40)
    shutil.copytree(ckpts["distil"], snap)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))
    cfg, _, labels, _ = bert.load_classifier("rajax-tests/tiny-distil")
    assert cfg.arch == "distilbert" and labels == IMDB_LABELS
