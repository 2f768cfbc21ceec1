"""grouprl: group-based reinforcement learning for LLMs and LLM agents."""

__version__ = "0.1.0"
