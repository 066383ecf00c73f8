"""The experiment: baseline, SFT only, RL only and SFT + RL, evaluated on its test files — at any scale.

    python -m search_r1.experiment                                            # tiny preset, embedded world
    python -m search_r1.experiment --config configs/experiment/qwen2.5-3b-nq.yaml dry_run=true
    python -m search_r1.experiment --config configs/experiment/rehearsal.yaml # the 3B plan on CPU

One runner for every preset: a preset only chooses the stages' inputs, configs, environments and
GPUs. Each stage is the user-facing entry point it stands for (``scripts/prepare_data.py``,
``scripts/download_wiki18.py``, ``python -m sft.generate``, ``train_sft.sh``, ``train_ppo.sh``,
``python -m search_r1.rl.export``, ``python -m search_r1.eval``), run as a subprocess in its own venv
(``venv_sft`` / ``venv_rl``: LLaMA-Factory and verl[vllm] do not share one on a GPU node) and on its
own GPUs: the retriever gets ``retriever_gpus`` and the trainers the rest. The retriever serves
every stage; a teacher server (``teacher_server``) runs only while teacher trajectories are made.
Both are stopped at the end, on failure, on Ctrl-C and on SIGTERM.

Each stage is skipped when it is done (``search_r1.experiment.stages``), so an interrupted run continues where
it stopped. ``dry_run=true`` prints every stage's command, environment, inputs and outputs and
checks what a machine without GPUs can: the configs compose (verl validates the exact overrides of
each verl stage), the inputs line up with earlier outputs, the GPU plan is consistent.

On the embedded world a preset can add counterfactual worlds with their own indexes
(``search_r1.experiment.worlds``): an unseen world every group is also scored on, and a world the RL
runs train on, after a pass-rate pre-pass (``search_r1.experiment.rl_plan``).

Outputs (``out_dir``): per seed ``seed<k>/{sft,ppo,eval}/``, ``stages/`` and ``logs/``, then
``results.md`` / ``results.json`` / ``results.png``: mean ± std over seeds and the paired
per-question differences with bootstrap CIs (``search_r1.eval.paired``), per test set.
``publish=true`` also copies them to ``docs/results/<preset>.*``; by default no tracked file is written.
"""

from search_r1.experiment.check import check_plan
from search_r1.experiment.config import ExperimentConfig
from search_r1.experiment.plan import plan, services
from search_r1.experiment.run import run_experiment

__all__ = ["ExperimentConfig", "check_plan", "plan", "run_experiment", "services"]
