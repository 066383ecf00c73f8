"""Compose our verl configs (``configs/rl/verl_*.yaml``) over verl's ``ppo_trainer.yaml`` and check them.

``check`` is what ``train_ppo.sh`` runs before launching verl, and what the tests assert on:
every key we set must exist in verl's composed defaults (a misspelled key would otherwise be
silently added by Hydra), and verl's own ``validate_config`` must accept the result.

Some verl nodes are free-form dicts handed on as keyword arguments or config overrides
(``actor_rollout_ref.model.override_config``, ``rollout.engine_kwargs.vllm``,
``reward.custom_reward_function.reward_kwargs``, ...): any key below them is legitimate, so the
check accepts keys there and rejects unknown keys everywhere else.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir, initialize_config_module
from omegaconf import DictConfig

from search_r1.config import die
from search_r1.paths import CONFIG_DIR

RL_CONFIG_DIR = CONFIG_DIR / "rl"
# Our configs start from verl's ppo_trainer.yaml, which Hydra finds through this search path
# (it can only be set from the primary config or the command line, so it is passed here).
SEARCHPATH = "hydra.searchpath=[pkg://verl.trainer.config]"
# Free-form dicts verl reads with ``.get(...)`` but does not declare in its defaults (the declared
# ones are empty ``{}`` nodes there, found by ``free_form_nodes``):
# verl.trainer.ppo.reward.get_custom_reward_fn passes reward_kwargs to the reward function.
UNDECLARED_FREE_FORM = ("reward.custom_reward_function.reward_kwargs",)


def compose_config(
    name: str = "verl_ppo", overrides: Sequence[str] = (), config_dir: Path = RL_CONFIG_DIR
) -> DictConfig:
    """Our config ``name`` composed by Hydra exactly as ``train_ppo.sh``'s verl run would."""
    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base=None):
        return compose(config_name=name, overrides=[SEARCHPATH, *overrides])


def verl_defaults() -> DictConfig:
    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        return compose(config_name="ppo_trainer")


def _leaves(node: object, prefix: str = "") -> Iterator[str]:
    if isinstance(node, DictConfig) and len(node) > 0:
        for key in node:
            yield from _leaves(node._get_node(key), f"{prefix}{key}.")
    else:
        yield prefix[:-1]


def free_form_nodes(defaults: DictConfig) -> set[str]:
    """Paths of verl's free-form dicts: the empty ``{}`` nodes of its defaults (kwargs and override
    dicts such as ``*.model.override_config``) plus ``UNDECLARED_FREE_FORM``."""
    return {k for k in _leaves(defaults) if _is_empty_dict(defaults, k)} | set(UNDECLARED_FREE_FORM)


def _is_empty_dict(node: DictConfig, path: str) -> bool:
    for key in path.split("."):
        node = node._get_node(key)
    return isinstance(node, DictConfig) and not node._is_none() and len(node) == 0


def unknown_keys(cfg: DictConfig, defaults: DictConfig | None = None) -> list[str]:
    """Keys of ``cfg`` that verl's composed defaults do not have (typos, renamed options); keys inside
    a free-form dict (``free_form_nodes``) are never unknown."""
    defaults = defaults if defaults is not None else verl_defaults()
    free = free_form_nodes(defaults)
    return [
        k
        for k in _leaves(cfg)
        if not _has(defaults, k) and not any(k == f or k.startswith(f + ".") for f in free)
    ]


def _has(node: DictConfig, path: str) -> bool:
    for key in path.split("."):
        # .keys(): `key in node` is False for a mandatory '???' value, which is still a known key
        if not isinstance(node, DictConfig) or key not in node.keys():  # noqa: SIM118
            return False
        node = node._get_node(key)
    return True


def check(
    name: str = "verl_ppo", overrides: Sequence[str] = (), config_dir: Path = RL_CONFIG_DIR
) -> DictConfig:
    """Compose, reject unknown keys, then run verl's ``validate_config``; returns the config."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    cfg = compose_config(name, overrides, config_dir)
    bad = unknown_keys(cfg)
    if bad:
        raise ValueError(f"{name}: keys unknown to verl: {bad}")
    validate_config(cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    return cfg


def config_errors() -> tuple[type[Exception], ...]:
    """What ``check`` raises for a bad config: Hydra's and OmegaConf's errors, our unknown keys
    (``ValueError``) and verl's ``validate_config`` (asserts and ``ValueError``/``TypeError``)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return (ValueError, AssertionError, TypeError, HydraException, OmegaConfBaseException)


def describe(name: str, exc: Exception) -> str:
    """One line for a rejected config (Hydra's messages run over several)."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if line.startswith(f"{name}:") else f"{name}: {line}"


def check_or_exit(name: str, overrides: Sequence[str], config_dir: Path = RL_CONFIG_DIR) -> DictConfig:
    """``check``, with a rejected config ending the process: exit 2 and one line on stderr."""
    try:
        return check(name, overrides, config_dir)
    except config_errors() as exc:
        die(describe(name, exc), 2)


def check_command_line(argv: Sequence[str]) -> None:
    """``check`` the config that verl's own command line names (``--config-path``, ``--config-name``
    and overrides, as ``train_ppo.sh`` passes them to ``search_r1.rl.verl_main``). Hydra reports the
    same mistakes itself, but over several lines and with exit 1, like a run that failed."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--config-path", "-cp", type=Path, default=RL_CONFIG_DIR)
    parser.add_argument("--config-name", "-cn", default="verl_ppo")
    parser.add_argument("--help", "-h", "--hydra-help", "--info", "-i", "--version", action="store_true")
    parser.add_argument("--cfg", "-c")
    args, rest = parser.parse_known_args(argv)
    if args.help or args.cfg:  # Hydra prints help or the composed config and runs nothing
        return
    overrides = [a for a in rest if "=" in a and not a.startswith("-") and "hydra." not in a.split("=")[0]]
    check_or_exit(args.config_name, overrides, args.config_path)


if __name__ == "__main__":
    check_or_exit(sys.argv[1] if len(sys.argv) > 1 else "verl_ppo", sys.argv[2:])
    print("ok")
