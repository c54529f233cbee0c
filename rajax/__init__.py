"""rajax: Risk-Averse RLHF (Chaudhary et al., NeurIPS 2024) in pure JAX/Flax."""
__version__ = "0.2.0"
