"""Emotive tags: the ones the model was trained with, and the check that refuses any other."""

from __future__ import annotations

import re

from orpheus_local.errors import InputError

# The emotive tags the fine-tuned model was trained with; any other tag is read aloud as words.
SUPPORTED_TAGS = ("laugh", "chuckle", "sigh", "cough", "sniffle", "groan", "yawn", "gasp")
# Anything in angle brackets without spaces: also catches the tokenizer's special tokens
# (<|eot_id|>, <custom_token_N>), which would otherwise break the prompt.
TAG = re.compile(r"<([^<>\s]+)>")


def check_tags(text: str) -> None:
    """InputError naming the first tag the model does not know."""
    for match in TAG.finditer(text):
        if match.group(1) not in SUPPORTED_TAGS:
            known = " ".join(f"<{tag}>" for tag in SUPPORTED_TAGS)
            raise InputError("text", f"unsupported tag {match.group(0)}; the supported tags are {known}")
