"""promptbench: config-driven prompt-tuning benchmark for medical vision-language models."""

__version__ = "0.1.0"
