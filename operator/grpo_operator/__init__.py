"""grpo_operator: the Kubernetes operator for GRPOJob resources."""
