"""The DSPy side: language-model clients, data loading, and the programs and reward
functions (metrics in DSPy's terms) a job names, resolved through the registry."""
