"""Tiny random causal LMs of the non-GPT-2 families, built by transformers and saved with
``save_pretrained`` (offline), for the parity tests of rajax.models.{llama,gptj} and their converters.

Each is perturbed after transformers' init (std 0.02, unit norms, zero biases), so norms and biases
matter and the logits are O(1): a 1e-4 tolerance then means something.
"""
import numpy as np

VOCAB = 97
# Llama with grouped-query attention (4 query heads over 2 kv heads) and Llama 3.1's rope scaling;
# original_max 16 puts the tiny head's frequencies in all three bands of the rule (kept, smoothed, divided).
LLAMA = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=False,
             rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
# Qwen2 with q/k/v bias, tied embeddings (Qwen2.5-0.5B's layout) and one kv head.
QWEN2 = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=1, max_position_embeddings=64, rms_norm_eps=1e-6, tie_word_embeddings=True,
             rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
# GPT-J with rotary on half of each 8-wide head (rotary_dim 4), untied head with bias.
GPTJ = dict(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4, rotary_dim=4)


def _perturb(model, seed):
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def make(kind: str, d, seed: int = 0, **over):
    """A tiny random ``kind`` (llama | qwen2 | gptj) saved to ``d``; returns the eval-mode torch model."""
    import torch
    import transformers

    torch.manual_seed(seed)
    if kind == "llama":
        cfg = transformers.LlamaConfig(**{**LLAMA, **over}, attn_implementation="eager")
        model = transformers.LlamaForCausalLM(cfg)
    elif kind == "qwen2":
        cfg = transformers.Qwen2Config(**{**QWEN2, **over}, attn_implementation="eager")
        model = transformers.Qwen2ForCausalLM(cfg)
    elif kind == "gptj":
        cfg = transformers.GPTJConfig(**{**GPTJ, "bos_token_id": None, "eos_token_id": None, **over},
                                      attn_implementation="eager")
        model = transformers.GPTJForCausalLM(cfg)
    else:
        raise ValueError(kind)
    model = _perturb(model, seed).eval()
    model.save_pretrained(str(d))
    return model


def padded_batch(lengths, width, seed=1, side="right", vocab=VOCAB):
    """Random ids [B, width] and a 0/1 mask with each row's real tokens on ``side``'s opposite end."""
    rng = np.random.default_rng(seed)
    lengths = np.asarray(lengths)
    ids = rng.integers(0, vocab, (len(lengths), width))
    ar = np.arange(width)[None]
    mask = (ar < lengths[:, None]) if side == "right" else (ar >= width - lengths[:, None])
    return ids, mask.astype(np.int64)


def torch_logits(model, ids, mask):
    """transformers' logits with positions from the mask, as its ``generate`` builds them."""
    import torch

    ids_t, mask_t = torch.tensor(ids), torch.tensor(mask)
    pos = (mask_t.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return model(input_ids=ids_t, attention_mask=mask_t, position_ids=pos).logits.numpy()
