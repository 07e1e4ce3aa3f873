"""Built-in metrics (resolve by name through grpo_trainer.registry)."""
