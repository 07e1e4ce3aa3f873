"""Built-in reward functions (DSPy metrics), resolved by name through grpo_trainer.dspy.registry."""
