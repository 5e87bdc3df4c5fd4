"""Text conditioning: the prompt tokenizer and the context fed to the UNets (spec §6)."""

from kvjax.text.conditioning import context_length, project_context, text_context, unconditional_context
from kvjax.text.tokenizer import T5Tokenizer, TokenizedText

__all__ = ["T5Tokenizer", "TokenizedText", "context_length", "project_context", "text_context",
           "unconditional_context"]
