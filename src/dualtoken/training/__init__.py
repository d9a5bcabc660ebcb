"""Training components shared by the tokenizer and MLLM trainers (checkpointing, schedules)."""
