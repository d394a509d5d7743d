"""flowrl: RL alignment for flow-matching image models and text LLMs."""

__version__ = "0.1.0"
