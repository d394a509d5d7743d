"""Model adapters: a policy object per model family (``SD3Policy``) and the toy base's architecture."""

from .sd3 import PromptCond, SD3Policy

__all__ = ["PromptCond", "SD3Policy"]
