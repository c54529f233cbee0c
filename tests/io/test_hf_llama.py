"""rajax.io.hf_llama: Llama / Qwen2 config.json and state dicts both ways. What rajax saves,
transformers loads with the same logits; hub-style configs (rope_theta + rope_scaling) read as the
Llama 3.1 rule; variants rajax does not compute are refused in one line."""
import numpy as np
import pytest
from tiny_lms import LLAMA, padded_batch, torch_logits

from rajax.io import hf, hf_llama

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# The config.json of meta-llama/Llama-3.2-1B as the hub serves it (transformers-4 era keys).
LLAMA_32_1B = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 128000,
    "eos_token_id": 128001, "head_dim": 64, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
    "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8, "pretraining_tp": 1,
    "rms_norm_eps": 1e-05, "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                            "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_cache": True,
    "vocab_size": 128256}


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_save_then_transformers_loads_the_same_model(tiny_causal_lm, tmp_path, kind):
    d, tm = tiny_causal_lm(kind)
    cfg, params = hf.load(d)
    out = hf.save(tmp_path / kind, cfg, params)
    back = transformers.AutoModelForCausalLM.from_pretrained(str(out), attn_implementation="eager").eval()
    assert type(back) is type(tm)
    ids, mask = padded_batch([10, 4], 10, side="left")
    np.testing.assert_allclose(torch_logits(back, ids, mask), torch_logits(tm, ids, mask), atol=1e-6)
    sd = hf.to_state_dict(cfg, params)
    assert ("lm_head.weight" in sd) == (kind == "llama")  # Qwen2 here is tied: no stored head
    cfg2, params2 = hf.load(out)
    assert cfg2 == cfg
    np.testing.assert_array_equal(params2["v_head"]["kernel"], params["v_head"]["kernel"])


def test_hub_llama_3_2_config_reads_as_llama3_rope():
    cfg = hf_llama.config_from_hf(LLAMA_32_1B)
    assert (cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.intermediate) == (2048, 16, 32, 8, 64, 8192)
    assert (cfg.rope_type, cfg.rope_theta, cfg.rope_factor, cfg.rope_original_max) == ("llama3", 5e5, 32.0, 8192)
    assert cfg.tie_embeddings and not cfg.qkv_bias and cfg.vocab_size == 128256
    # What we write, transformers reads back to the same rope rule and shapes.
    tc = transformers.LlamaConfig(**{k: v for k, v in hf_llama.config_to_hf(cfg).items() if k != "architectures"})
    assert tc.rope_parameters["rope_type"] == "llama3" and tc.rope_parameters["factor"] == 32.0
    assert hf_llama.config_from_hf(tc.to_dict()) == cfg


def test_refusals_are_one_line():
    base = {"model_type": "llama", **{k: v for k, v in LLAMA.items() if k != "rope_parameters"}}
    with pytest.raises(ValueError, match="rope type 'yarn'"):
        hf_llama.config_from_hf({**base, "rope_scaling": {"rope_type": "yarn", "factor": 2.0}})
    with pytest.raises(ValueError, match="hidden_act 'gelu'"):
        hf_llama.config_from_hf({**base, "hidden_act": "gelu"})
    with pytest.raises(ValueError, match="sliding-window"):
        hf_llama.config_from_hf({**base, "model_type": "qwen2", "use_sliding_window": True})
    with pytest.raises(ValueError, match="lacks hidden_size"):
        hf_llama.config_from_hf({"model_type": "llama", "vocab_size": 10})


def test_missing_and_misshaped_tensors(tiny_causal_lm):
    d, _ = tiny_causal_lm("llama")
    cfg, params = hf.load(d)
    sd = hf.to_state_dict(cfg, params)
    short = dict(sd)
    del short["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(ValueError, match=r"missing \['model.layers.1.mlp.up_proj.weight'\]"):
        hf.from_state_dict(cfg, short)
    bad = {**sd, "model.norm.weight": np.ones(7, np.float32)}
    with pytest.raises(ValueError, match=r"'model.norm.weight' has shape \(7,\), expected \(32,\)"):
        hf.from_state_dict(cfg, bad)
    # An old checkpoint's rotary buffer is dropped silently; a tied model ignores a stored lm_head
    # (transformers ties it to embed_tokens on load), an unknown tensor is a warning.
    p2 = hf.from_state_dict(cfg, {**sd, "model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(4, np.float32)})
    np.testing.assert_array_equal(p2["norm"]["scale"], params["norm"]["scale"])
    qd, _ = tiny_causal_lm("qwen2")
    qcfg, qparams = hf.load(qd)
    qsd = hf.to_state_dict(qcfg, qparams)
    assert "lm_head" not in hf.from_state_dict(qcfg, {**qsd, "lm_head.weight": np.zeros((97, 32), np.float32)})
    with pytest.warns(UserWarning, match="ignoring 1 unexpected Qwen2 checkpoint tensors"):
        hf.from_state_dict(qcfg, {**qsd, "model.extra.weight": np.zeros(3, np.float32)})
