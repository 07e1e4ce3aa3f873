"""The GRPO algorithm: rollouts into groups, the loss, the LoRA policy and its update."""
