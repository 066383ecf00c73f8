"""``python -m search_r1.world [fixtures]``: build the world and the tiny base model (both cached);
``fixtures`` builds every cached file the tests share as well (``search_r1.world.setup``)."""

from search_r1.world.setup import main

if __name__ == "__main__":
    main()
