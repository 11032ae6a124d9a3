"""The skillserve trainer: masked supervised fine-tuning of a LoRA adapter, published to the object store."""
