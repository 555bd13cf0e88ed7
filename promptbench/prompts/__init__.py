"""Prompt machinery written once over the tower adapters; methods compose it."""

from promptbench.prompts.hooks import edit_layers
from promptbench.prompts.text import TextPromptLearner, clean_classname
from promptbench.prompts.visual import (
    VisualPromptLayout,
    VisualPromptTokens,
    encode_image_with_prompts,
    prompt_tokens_forward,
    vpt_uniform_bound,
)

__all__ = [
    "TextPromptLearner",
    "VisualPromptLayout",
    "VisualPromptTokens",
    "clean_classname",
    "edit_layers",
    "encode_image_with_prompts",
    "prompt_tokens_forward",
    "vpt_uniform_bound",
]
