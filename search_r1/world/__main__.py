"""``python -m search_r1.world``: build the world and the tiny base model (both cached)."""

from search_r1.world.setup import main

if __name__ == "__main__":
    main()
