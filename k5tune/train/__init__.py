"""Training: the loop, the flow-matching objective, LoRA set-up and saving."""
