"""Stepline's shared vocabulary: token counts, messages, roles, money text and the error tree.

Pure types here; `stepline_vocab.wire` converts them to and from the `stepline.v1` protos.
"""

from stepline_vocab.errors import BadInputError, ConfigurationError, ProviderError, SteplineError
from stepline_vocab.messages import (
    Message,
    Role,
    ToolCall,
    canonical_arguments,
    image_ref,
    split_data_uri,
)
from stepline_vocab.money import MoneyError, format_amount, parse_amount
from stepline_vocab.tokens import Tokens

__all__ = [
    "BadInputError",
    "ConfigurationError",
    "Message",
    "MoneyError",
    "ProviderError",
    "Role",
    "SteplineError",
    "Tokens",
    "ToolCall",
    "canonical_arguments",
    "format_amount",
    "image_ref",
    "parse_amount",
    "split_data_uri",
]
