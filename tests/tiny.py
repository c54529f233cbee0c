"""Shared test helpers: tiny tokenizers built offline."""


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
