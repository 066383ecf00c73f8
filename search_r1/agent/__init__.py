"""The search agent: the tag protocol, prompts, generation engines and the rollout loop."""
