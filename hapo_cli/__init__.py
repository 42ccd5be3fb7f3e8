"""hapo: token-aware reinforcement learning of LLM reasoning (DAPO baselines, HAPO and its components)."""

__version__ = "0.1.0"
