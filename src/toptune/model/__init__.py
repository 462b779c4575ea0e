"""The model: load a Qwen checkpoint as a classifier, its family, tokenizer, LoRA, precision."""
