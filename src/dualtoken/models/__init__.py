"""Model code: the DualToken tokenizer and its parts. Knows nothing of training loops or orchestration."""
