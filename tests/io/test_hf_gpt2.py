"""rajax.io.hf_gpt2: the GPT-2 key and config mapping, and what it refuses."""
import numpy as np
import pytest

from rajax.io import hf_gpt2
from rajax.models import gpt2

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CFG = gpt2.GPT2Config(vocab_size=50, n_positions=16, n_embd=24, n_layer=2, n_head=3, dropout=0.0)


@pytest.fixture(scope="module")
def torch_sd():
    torch.manual_seed(0)
    m = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=50, n_positions=16, n_embd=24, n_layer=2, n_head=3, bos_token_id=49, eos_token_id=49))
    return {k: v.detach().numpy() for k, v in m.state_dict().items()}


def test_state_dict_round_trip_and_layout(torch_sd):
    params = hf_gpt2.params_from_state_dict(CFG, torch_sd)
    assert "v_head" not in params  # the value head is rajax.io.hf's job
    out = hf_gpt2.state_dict_from_params(CFG, params)
    assert all(k.startswith("transformer.") for k in out) and "transformer.lm_head.weight" not in out
    assert set(out) == {k for k in torch_sd if not k.endswith((".attn.bias", ".attn.masked_bias"))} - {"lm_head.weight"}
    for k, v in out.items():
        assert v.dtype == np.float32 and v.flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(v, torch_sd[k])  # Conv1D is (in, out) like our kernels: no transposes
    # Without the prefix and with the causal-mask buffers (the hub's original gpt2 layout).
    bare = {k.removeprefix("transformer."): v for k, v in torch_sd.items()}
    bare["h.0.attn.bias"] = np.tril(np.ones((1, 1, 16, 16), np.float32))
    again = hf_gpt2.params_from_state_dict(CFG, bare)
    np.testing.assert_array_equal(again["h"][1]["mlp"]["c_fc"]["kernel"], params["h"][1]["mlp"]["c_fc"]["kernel"])


def test_untied_lm_head_missing_and_misshaped_tensors_are_errors(torch_sd):
    sd = dict(torch_sd)
    sd["lm_head.weight"] = sd["lm_head.weight"] + 1.0
    with pytest.raises(ValueError, match="lm_head.weight that differs"):
        hf_gpt2.params_from_state_dict(CFG, sd)
    sd = dict(torch_sd)
    del sd["transformer.h.1.mlp.c_fc.bias"]
    with pytest.raises(ValueError, match=r"missing \['h.1.mlp.c_fc.bias'\]"):
        hf_gpt2.params_from_state_dict(CFG, sd)
    with pytest.raises(ValueError, match="shape"):
        hf_gpt2.params_from_state_dict(CFG.replace(n_positions=32), torch_sd)
    with pytest.warns(UserWarning, match="ignoring 1 unexpected"):
        hf_gpt2.params_from_state_dict(CFG, {**torch_sd, "transformer.extra.weight": np.zeros(3)})


def test_config_mapping_round_trips_and_refuses_other_functions():
    hf = hf_gpt2.config_to_hf(CFG)
    # Only GPT-2's own vocabulary says which id is EOS (50256); another one's is the tokenizer's to say.
    assert hf["model_type"] == "gpt2" and hf["tie_word_embeddings"] and hf["eos_token_id"] is None
    assert hf_gpt2.config_to_hf(CFG.replace(vocab_size=50257))["eos_token_id"] == 50256
    assert hf_gpt2.config_from_hf(hf) == CFG
    assert hf_gpt2.config_from_hf(hf, dtype="bfloat16").dtype == "bfloat16"
    assert transformers.GPT2Config(**hf).n_embd == 24  # transformers reads it
    for bad, needle in ((dict(activation_function="relu"), "gelu_new"),
                        (dict(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx"),
                        (dict(scale_attn_weights=False), "scale_attn_weights"),
                        (dict(n_inner=7), "n_inner"), (dict(model_type="gptj"), "model_type")):
        with pytest.raises(ValueError, match=needle):
            hf_gpt2.config_from_hf({**hf, **bad})
    with pytest.raises(ValueError, match="dtype"):
        hf_gpt2.config_from_hf(hf, dtype="int8")
