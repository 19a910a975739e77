"""The math of the methods, free of Ray: plain torch/numpy functions with hand-checked tests."""
