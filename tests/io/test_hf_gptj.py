"""rajax.io.hf_gptj: GPT-J config.json and state dicts both ways (transposed projections, untied head
with bias); what rajax saves, transformers loads with the same logits; variants refused in one line."""
import numpy as np
import pytest
from tiny_lms import GPTJ, padded_batch, torch_logits

from rajax.io import hf, hf_gptj

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def test_save_then_transformers_loads_the_same_model(tiny_causal_lm, tmp_path):
    d, tm = tiny_causal_lm("gptj")
    cfg, params = hf.load(d)
    # The torch weights, transposed where nn.Linear stores (out, in).
    w = tm.transformer.h[1].attn.q_proj.weight.detach().numpy()
    np.testing.assert_array_equal(np.asarray(params["h"][1]["attn"]["q_proj"]["kernel"]), w.T)
    np.testing.assert_array_equal(np.asarray(params["lm_head"]["bias"]), tm.lm_head.bias.detach().numpy())
    out = hf.save(tmp_path / "gptj", cfg, params)
    back = transformers.AutoModelForCausalLM.from_pretrained(str(out), attn_implementation="eager").eval()
    assert type(back).__name__ == "GPTJForCausalLM"
    ids, mask = padded_batch([10, 4], 10, side="left")
    np.testing.assert_allclose(torch_logits(back, ids, mask), torch_logits(tm, ids, mask), atol=1e-6)
    assert hf.load(out)[0] == cfg


def test_old_buffers_are_dropped_and_refusals_are_one_line(tiny_causal_lm):
    d, _ = tiny_causal_lm("gptj")
    cfg, params = hf.load(d)
    sd = hf.to_state_dict(cfg, params)
    buf = {"transformer.h.0.attn.bias": np.ones((1, 1, 4, 4), bool), "transformer.h.0.attn.masked_bias": np.float32(-1e9)}
    p2 = hf.from_state_dict(cfg, {**sd, **buf})
    np.testing.assert_array_equal(p2["wte"]["embedding"], params["wte"]["embedding"])
    base = {"model_type": "gptj", **GPTJ}
    assert hf_gptj.config_from_hf(base) == cfg
    with pytest.raises(ValueError, match="tie_word_embeddings=true"):
        hf_gptj.config_from_hf({**base, "tie_word_embeddings": True})
    with pytest.raises(ValueError, match="rotary_dim=null"):
        hf_gptj.config_from_hf({**base, "rotary_dim": None})
    with pytest.raises(ValueError, match="different dropout rates"):
        hf_gptj.config_from_hf({**base, "attn_pdrop": 0.1})
    six_b = hf_gptj.config_from_hf({"model_type": "gptj"})  # EleutherAI/gpt-j-6B: every default
    assert (six_b.vocab_size, six_b.n_embd, six_b.n_layer, six_b.rotary_dim, six_b.inner) == (50400, 4096, 28, 64, 16384)
