"""diffexp: Hydra-configured experiments for training, sampling, evaluating and comparing diffusion models."""
