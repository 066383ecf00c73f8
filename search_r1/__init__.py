"""search_r1: teach small language models to use a search engine.

Pipeline stages, one sub-package each: ``retrieval`` → ``agent`` → (``sft/`` at the top level)
→ ``rl`` → ``eval``. ``world`` builds the embedded default (data + tiny model); ``rewards`` holds
the metrics every stage shares; ``data`` the dataset schemas and builders.
"""

__version__ = "0.1.0"
