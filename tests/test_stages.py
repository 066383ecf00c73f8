"""A stage is done only when it finished and its outputs exist; a failure says which stage and why."""

from __future__ import annotations

import sys

import pytest

from search_r1.experiment.stages import Stage, StageError, is_done, line_up, run_stage


def _stage(tmp_path, code: str, outputs: list[str] | None = None) -> Stage:
    return Stage("seed0/step", [sys.executable, "-c", code], outputs=outputs or [], env={"GREETING": "hi"})


def test_a_finished_stage_is_done_until_its_output_goes(tmp_path) -> None:
    out = tmp_path / "out.txt"
    stage = _stage(tmp_path, f"import os; open({str(out)!r}, 'w').write(os.environ['GREETING'])", [str(out)])
    assert not is_done(tmp_path, stage)
    run_stage(stage, tmp_path, {})
    assert out.read_text() == "hi" and is_done(tmp_path, stage)
    out.unlink()  # e.g. a user deleted a model: the stage is due again
    assert not is_done(tmp_path, stage)


def test_a_failed_stage_raises_with_its_log_and_stays_due(tmp_path) -> None:
    stage = _stage(tmp_path, "import sys; print('[step] the retriever refused'); sys.exit(3)")
    with pytest.raises(StageError, match=r"(?s)seed0/step failed \(exit 3\).*the retriever refused"):
        run_stage(stage, tmp_path, {})
    assert not is_done(tmp_path, stage)


def test_exit_0_without_the_promised_output_is_a_failure(tmp_path) -> None:
    stage = _stage(tmp_path, "pass", [str(tmp_path / "never.txt")])
    with pytest.raises(StageError, match="did not write"):
        run_stage(stage, tmp_path, {})
    assert not is_done(tmp_path, stage)


def test_service_urls_are_filled_into_the_command(tmp_path) -> None:
    out = tmp_path / "url.txt"
    stage = Stage(
        "s",
        [sys.executable, "-c", f"import sys; open({str(out)!r}, 'w').write(sys.argv[1])", "url={retriever}"],
    )
    run_stage(stage, tmp_path, {"retriever": "http://127.0.0.1:9"})
    assert out.read_text() == "url=http://127.0.0.1:9"


def test_inputs_must_exist_or_come_from_an_earlier_stage(tmp_path) -> None:
    made = str(tmp_path / "model")
    first = Stage("train", ["true"], outputs=[made + "/config.json"])
    second = Stage("eval", ["true"], inputs=[made, "Org/Hub-Model"])
    assert line_up([first, second]) == []
    problems = line_up([second, first])  # eval before train: its model does not exist yet
    assert problems == [f"eval: input {made} does not exist and no earlier stage writes it"]
