"""The skillserve trainer: a LoRA adapter trained by one of its methods (supervised, DPO) on the shared loop
(trainer/loop.py), published to the object store."""
