"""Generation: chat requests (text + images) in, completions out, from a checkpoint or a server.

`backend` holds the request/result types and the `GenerationBackend` protocol (it imports no
backend); the backends are `transformers_backend` (the default), `vllm_backend` (vLLM's offline
engine) and `openai_backend` (OpenAI-compatible servers); `load.load_backend` builds the one a
config names.
"""
