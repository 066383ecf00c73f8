"""Where things live by default, so every entry point agrees without passing paths around."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"
FIXTURE_DIR = REPO_ROOT / "data"

# Generated artefacts (world, models, indexes, runs) go under one git-ignored folder that can be
# moved with SEARCH_R1_HOME, e.g. to a fast local disk on a GPU node.
HOME = Path(os.environ.get("SEARCH_R1_HOME", REPO_ROOT / "outputs"))
WORLD_DIR = HOME / "world"
MODELS_DIR = HOME / "models"
INDEX_DIR = HOME / "indexes"
RUNS_DIR = HOME / "runs"
