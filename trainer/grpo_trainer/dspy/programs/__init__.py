"""Built-in DSPy programs (resolve by name through grpo_trainer.dspy.registry)."""
