"""The skillserve gateway: an OpenAI-compatible API over vLLM with hot-loaded LoRA adapters."""
