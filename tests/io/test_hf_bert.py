"""The BERT/DistilBERT converter (rajax.io.hf_bert): legacy names, saving, loader errors, the hub cache."""
import json
import os
import shutil

import numpy as np
import pytest
from tiny import IMDB_LABELS, TINY, TOXIC_LABELS, encode, sample_texts, torch_logits

from rajax.io.hf_bert import load_classifier, save_classifier
from rajax.models import bert


def test_legacy_names_give_same_params(bert_ckpts):
    import jax

    a = load_classifier(bert_ckpts["bert"])[1]
    b = load_classifier(bert_ckpts["legacy"])[1]
    assert jax.tree.all(jax.tree.map(lambda x, y: bool((x == y).all()), a, b))


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_save_classifier_loads_in_transformers(bert_ckpts, jit_apply, tmp_path, arch):
    import jax
    import transformers

    labels = TOXIC_LABELS if arch == "bert" else ["x", "y"]
    # Same shapes as the loaded checkpoints, so the jitted apply is reused (no new compile).
    cfg = bert.BertConfig(arch=arch, vocab_size=len(bert_ckpts["tokenizer"]), num_labels=len(labels), **TINY)
    params = bert.init(cfg, jax.random.key(1))
    # Scale up the random init so logits are O(1) (BERT's 0.02 init gives ~1e-3 logits).
    params = jax.tree.map(lambda x: x * 10 if x.ndim == 2 else x, params)
    path = save_classifier(str(tmp_path / arch), cfg, params, labels, bert_ckpts["tokenizer"])
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(path).eval()
    assert type(hf).__name__ == ("BertForSequenceClassification" if arch == "bert"
                                 else "DistilBertForSequenceClassification")
    texts = sample_texts(6, seed=2)
    ref = torch_logits(hf, bert_ckpts["tokenizer"], texts)
    enc = encode(bert_ckpts["tokenizer"], texts)
    got = np.asarray(jit_apply(cfg, params, enc["input_ids"], enc["attention_mask"]))
    assert np.abs(ref).max() > 0.3
    assert np.abs(got - ref).max() <= 1e-4
    cfg2, params2, labels2, tok2 = load_classifier(path)
    assert cfg2 == cfg and labels2 == labels and tok2("the movie")["input_ids"] == \
        bert_ckpts["tokenizer"]("the movie")["input_ids"]
    assert jax.tree.all(jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), params, params2))


def test_loader_errors(bert_ckpts, tmp_path):
    from safetensors.numpy import load_file, save_file

    with pytest.raises(FileNotFoundError, match="--reward-model '/nonexistent/dir': no such directory"):
        load_classifier("/nonexistent/dir")
    # HF_HUB_OFFLINE=1 (conftest) and not cached: one clear line, naming the option.
    with pytest.raises(ValueError, match="--tox 'rajax-tests/not-a-model': not a local directory") as e:
        load_classifier("rajax-tests/not-a-model", what="--tox")
    assert "\n" not in str(e.value)
    # A checkpoint without its classification head (e.g. an MLM base model).
    d = tmp_path / "nohead"
    d.mkdir()
    shutil.copy(os.path.join(bert_ckpts["bert"], "config.json"), d)
    sd = load_file(os.path.join(bert_ckpts["bert"], "model.safetensors"))
    save_file({k: v for k, v in sd.items() if not k.startswith("classifier")}, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match="no classification head"):
        load_classifier(str(d))
    # A config that is not BERT-like.
    c = json.load(open(os.path.join(bert_ckpts["bert"], "config.json")))
    c["model_type"] = "gpt2"
    json.dump(c, open(d / "config.json", "w"))
    with pytest.raises(ValueError, match="not a BERT or DistilBERT"):
        load_classifier(str(d))
    with pytest.raises(ValueError, match="arch must be"):
        bert.BertConfig(arch="roberta")


def test_hub_id_from_offline_cache(bert_ckpts, tmp_path, monkeypatch):
    """A hub id resolves through huggingface_hub's cache when HF_HUB_OFFLINE=1 (no network)."""
    import huggingface_hub.constants as hc

    snap = tmp_path / "models--rajax-tests--tiny-distil" / "snapshots" / ("0" * 40)
    shutil.copytree(bert_ckpts["distil"], snap)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))
    cfg, _, labels, _ = load_classifier("rajax-tests/tiny-distil")
    assert cfg.arch == "distilbert" and labels == IMDB_LABELS
