"""``python -m search_r1.experiment``: see the package docstring."""

from search_r1.experiment.run import main

main()
