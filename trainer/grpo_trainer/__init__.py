"""grpo_trainer: GRPO optimisation of DSPy programs with LoRA; never imports Kubernetes."""
