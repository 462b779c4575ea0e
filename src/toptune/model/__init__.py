"""The model: load a Qwen base checkpoint as a classifier, its family, tokenizer, LoRA, precision."""
