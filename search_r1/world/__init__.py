"""The embedded world: a generated knowledge base, Wikipedia distractors, questions and a tiny model.

Everything is produced offline and deterministically from a seed (``python -m search_r1.world.build``).
"""
