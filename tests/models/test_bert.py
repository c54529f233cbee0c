"""BERT/DistilBERT classifiers (rajax.models.bert) vs transformers' PyTorch models, float32 and bfloat16.

The tiny checkpoints come from tests/tiny.py (``build_checkpoints``), loaded through rajax.io.hf_bert.
"""
import numpy as np
import pytest
from tiny import IMDB_LABELS, TOXIC_LABELS, encode, sample_texts, torch_logits

from rajax.io.hf_bert import load_classifier


@pytest.mark.parametrize("name", ["bert", "distil", "legacy"])
def test_parity_with_torch(bert_ckpts, jit_apply, name):
    cfg, params, labels, tok = load_classifier(bert_ckpts[name])
    assert cfg.arch == ("distilbert" if name == "distil" else "bert")
    assert (cfg.hidden, cfg.layers, cfg.heads, cfg.intermediate, cfg.max_position) == (32, 2, 2, 37, 64)
    assert labels == (IMDB_LABELS if name == "distil" else TOXIC_LABELS)
    model = bert_ckpts["models"][name]
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


def test_bf16_close_to_f32(bert_ckpts, jit_apply):
    cfg, params, _, tok = load_classifier(bert_ckpts["bert"])
    enc = encode(tok, sample_texts(6, seed=3))
    f32 = np.asarray(jit_apply(cfg, params, enc["input_ids"], enc["attention_mask"]))
    b16 = np.asarray(jit_apply(cfg.replace(dtype="bfloat16"), params, enc["input_ids"], enc["attention_mask"]))
    assert b16.dtype == np.float32
    assert np.abs(b16 - f32).max() <= 0.05 * max(1.0, np.abs(f32).max())


def test_last_layer_computes_only_the_cls_row():
    """The head reads the final [CLS] row only, so the last layer's FFN runs on one row per text
    (the earlier layers on all of them); parity above shows the logits are unchanged."""
    import jax
    import jax.numpy as jnp

    from rajax.models import bert

    cfg = bert.BertConfig(vocab_size=50, hidden=16, layers=3, heads=2, intermediate=24, max_position=32)
    params = bert.init(cfg, jax.random.key(0))
    jaxpr = jax.make_jaxpr(lambda p, i: bert.apply(cfg, p, i))(params, jnp.ones((3, 10), jnp.int32))
    ffn_out_shapes = [tuple(e.outvars[0].aval.shape) for e in jaxpr.jaxpr.eqns
                      if e.primitive.name == "dot_general" and e.outvars[0].aval.shape[-1] == cfg.intermediate]
    assert ffn_out_shapes == [(3, 10, 24), (3, 10, 24), (3, 1, 24)]
