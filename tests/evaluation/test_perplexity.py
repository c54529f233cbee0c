"""rajax.evaluation.perplexity against a transformers computation of the same protocol (docs/paper.md §4.2)."""
import numpy as np
from tiny import SENTENCES

from rajax.evaluation import perplexity as E


def _torch_ppl(model, tok, text):
    """The measurement's protocol with transformers: BOS + tokens, exp(mean NLL), one text at a time."""
    import torch

    ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = model(x).logits[0, :-1].double()
    nll = torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="mean")
    return float(torch.exp(nll))


def test_perplexity_matches_transformers(tiny_lm):
    texts = [s * (1 + i % 3) for i, s in enumerate(SENTENCES[:6])] + ["hi", "the cat"]
    got = E.perplexities(tiny_lm["cfg"], tiny_lm["params"], tiny_lm["tok"], texts, batch_size=4, max_chars=120)
    model = tiny_lm["torch_model"].eval()
    want = np.array([_torch_ppl(model, tiny_lm["tok"], t[:120]) for t in texts])
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert np.all(got > 1.0)
    # BOS is prepended: a one-token text still has one prediction (from BOS)
    seqs = E.encode_for_perplexity(tiny_lm["tok"], ["hi"], max_chars=None)
    assert seqs[0][0] == tiny_lm["tok"].eos_token_id and len(seqs[0]) >= 2
    # an empty text has nothing to predict
    assert np.isnan(E.perplexities(tiny_lm["cfg"], tiny_lm["params"], tiny_lm["tok"], [""], batch_size=4))[0]


def test_perplexity_encoding_with_the_real_gpt2_tokenizer(shared_data):
    """Uses ../shared/data/gpt2-tokenizer (GPT-2's real vocabulary): BOS = <|endoftext|> = 50256 first."""
    from rajax.io.tokenizer import load_tokenizer

    tok = load_tokenizer(str(shared_data / "gpt2-tokenizer"))
    assert E.encode_for_perplexity(tok, ["Hello world, bye"], max_chars=11) == [[50256, 15496, 995]]
