"""Reward models, installed as ``flowrl.rewards`` (one file per reward model)."""
