"""The commands: train, sft, evaluate, study, export (``rajax <command>``, ``python -m rajax``).

Importing this package first quiets the libraries underneath, before any of them is imported:
notices that do not concern the user (transformers' "PyTorch was not found", its advisory warnings,
TensorFlow's C++ log) are not printed.
"""
import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
