"""Data: tokenizer, tokenized ArrayRecord datasets (TFDS), corpus builders, the Grain loader."""
