"""A user's own DSPy task, shipped as code with a GRPOJob (not part of the trainer image).

Classify a one-line text into a topic. The tests deliver this package to the
trainer by ConfigMap, by git and from a directory; README "Your own program".
"""
