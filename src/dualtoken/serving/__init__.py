"""Serving what the stages trained: loading an MLLM with its tokenizer to chat and generate (``inference``),
logging and registering both models in MLflow (``registry``) and the MLflow models-from-code they load as
(``pyfunc_tokenizer``, ``pyfunc_mllm``)."""
