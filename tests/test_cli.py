"""The `kojudge` command line: judge and score jobs, errors with line numbers, kill and resume."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from kojudge.app.cli import main
from kojudge.utils import process_device

CANDIDATES = ["The sum is \\boxed{12}", "so \\boxed{13}", "\\boxed{12}", "answer: 11", "\\boxed{14}"]


def write_items(path, count):
    with path.open("w") as f:
        for i in range(count):
            f.write(json.dumps({"id": f"q{i}", "question": f"What is {i} + 7?", "candidates": CANDIDATES[: 1 + i % 5]}) + "\n")
    return path


def judge_cmd(model, inp, out, *extra):
    return [sys.executable, "-m", "kojudge.app.cli", "judge", "--model", str(model), "--input", str(inp),
            "--output", str(out), "--max-tokens", "12", "--max-num-seqs", "2", *extra]


def records(path):
    return sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda r: r["id"])


def test_judge_killed_midway_resumes_to_the_same_output(tmp_path, model_dirs):
    model = model_dirs["qwen2-tied"]
    inp = write_items(tmp_path / "in.jsonl", 24)
    full, partial = tmp_path / "full.jsonl", tmp_path / "partial.jsonl"
    subprocess.run(judge_cmd(model, inp, full), check=True, capture_output=True)
    proc = subprocess.Popen(judge_cmd(model, inp, partial), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and (not partial.exists() or partial.read_text().count("\n") < 3):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = partial.read_text().count("\n")
    assert 3 <= done_before < 24, "the run should have been killed midway"
    subprocess.run(judge_cmd(model, inp, partial, "--resume"), check=True, capture_output=True)
    assert records(partial) == records(full)
    assert len(records(full)) == 24
    single = next(r for r in records(full) if r["id"] == "q0")
    assert single["winner"] == 0 and single["judge_calls"] == 0  # one candidate wins without a call


def test_resume_drops_a_line_cut_short_by_a_kill(tmp_path, model_dirs):
    inp = write_items(tmp_path / "in.jsonl", 3)
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps({"id": "q0", "winner": 0}) + "\n" + '{"id": "q1", "win')
    main(["judge", "--model", str(model_dirs["qwen2-tied"]), "--input", str(inp), "--output", str(out),
          "--max-tokens", "8", "--resume"])
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert sorted(ids) == ["q0", "q1", "q2"]


@pytest.mark.parametrize("content, message", [
    ('{"id": 1, "question": "q", "candidates": ["a"]}\n{"id": 2, "question": "q", "candidates": [\n', r"in.jsonl:2: invalid JSON"),
    ('{"id": 1, "candidates": ["a"]}\n', r"in.jsonl:1: missing field 'question'"),
    ('{"id": 1, "question": "q", "candidates": []}\n', r"in.jsonl:1: field 'candidates' is empty"),
    ('{"id": 1, "question": "q", "candidates": "a"}\n', r"in.jsonl:1: field 'candidates' has the wrong type"),
    ('{"id": 1, "question": "q", "candidates": ["a"]}\n\n{"id": 1, "question": "q", "candidates": ["b"]}\n',
     r"in.jsonl:3: duplicate id 1"),
])
def test_bad_judge_input_is_a_clear_error(tmp_path, model_dirs, capsys, content, message):
    inp = tmp_path / "in.jsonl"
    inp.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        main(["judge", "--model", str(model_dirs["qwen2-tied"]), "--input", str(inp), "--output", str(tmp_path / "o"),
              "--on-error", "stop"])
    assert exit_info.value.code == 2
    assert message.replace("\\", "") in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing started


def test_score_writes_votes_per_response(tmp_path, model_dirs):
    inp = tmp_path / "s.jsonl"
    inp.write_text(json.dumps({"id": "a", "prompt": "Say hi", "responses": ["hi", "hello"]}) + "\n"
                   + json.dumps({"id": "b", "prompt": "2+2?", "response": "4", "domain": "math"}) + "\n")
    out = tmp_path / "s_out.jsonl"
    main(["score", "--model", str(model_dirs["qwen3-tied"]), "--input", str(inp), "--output", str(out),
          "--max-tokens", "10", "--n", "2"])
    rows = records(out)
    assert [len(r["scores"]) for r in rows] == [2, 1]
    assert all(len(r) == 2 for row in rows for r in row["rollout_scores"])


def test_torchrun_style_sharding_merges_in_input_order(tmp_path, model_dirs):
    inp = write_items(tmp_path / "in.jsonl", 5)
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "WORLD_SIZE": "2"}
    procs = [subprocess.Popen(judge_cmd(model_dirs["qwen2-tied"], inp, out), env={**env, "RANK": str(r)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for r in (1, 0)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [f"q{i}" for i in range(5)]


def test_demo_runs_the_knockout_with_a_judge_directory(tmp_path):
    from kojudge.demo.run import run_demo
    from kojudge.model.tiny import make_tiny_model
    from kojudge.train.recipes.demo_judge import write_templates

    judge = make_tiny_model(tmp_path / "judge", "qwen2", char_tokenizer=True)
    write_templates(judge)
    report = run_demo(judge, questions=4, n=4, max_tokens=16, pointwise_samples=2, progress=False)
    assert set(report.accuracy) == {"knockout", "random pick", "answer majority vote", "pointwise mean vote", "oracle"}
    assert report.accuracy["oracle"] >= report.accuracy["knockout"]
    assert 0 < report.judge_calls <= 4 * 3 and report.cached_ratio > 0  # the chat header is shared
    assert "judge calls/s" in report.table()


def test_under_torchrun_each_process_takes_its_own_gpu(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert process_device("cuda") == "cuda"
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert process_device("cuda") == "cuda:3"
    assert process_device("cuda:1") == "cuda:1" and process_device("cpu") == "cpu"


def test_an_attention_backend_that_cannot_run_is_a_clear_error(tmp_path, model_dirs, capsys):
    inp = write_items(tmp_path / "in.jsonl", 2)
    with pytest.raises(SystemExit) as exit_info:
        main(["judge", "--model", str(model_dirs["qwen2-tied"]), "--input", str(inp), "--output", str(tmp_path / "o"),
              "--attention-backend", "flashinfer"])
    assert exit_info.value.code == 2
    assert "flashinfer" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["judge", "score"])
def test_a_prompt_too_long_for_the_judge_is_named_before_any_work(tmp_path, model_dirs, capsys, command):
    long = "word " * 2100  # past the tiny judge's 2,048 positions however it tokenizes
    inp = tmp_path / "in.jsonl"
    if command == "judge":
        inp.write_text(json.dumps({"id": "short", "question": "q", "candidates": ["a", "b"]}) + "\n"
                       + json.dumps({"id": "long", "question": "q", "candidates": ["a", long, "b"]}) + "\n")
        expected = "in.jsonl: item 'long': its two longest candidates make a judge prompt of"
    else:
        inp.write_text(json.dumps({"id": "short", "prompt": "p", "response": "r"}) + "\n"
                       + json.dumps({"id": "long", "prompt": "p", "responses": ["r", long]}) + "\n")
        expected = "in.jsonl: item 'long': its judge prompt has"
    out = tmp_path / "out.jsonl"
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--model", str(model_dirs["qwen2-tied"]), "--input", str(inp), "--output", str(out),
              "--max-tokens", "8", "--on-error", "stop"])
    assert exit_info.value.code == 2
    assert expected in capsys.readouterr().err
    assert not out.exists() or not out.read_text()  # nothing judged, nothing half-written


@pytest.mark.parametrize("command", ["judge", "score"])
def test_one_bad_item_costs_only_itself(tmp_path, model_dirs, capsys, command):
    """An item too long for the judge and a line that is not JSON become error lines; every good
    item is judged; the job exits 1 with the count."""
    long = "word " * 2100
    inp = tmp_path / "in.jsonl"
    if command == "judge":
        good = [{"id": f"g{i}", "question": "q", "candidates": ["a", f"b{i}"]} for i in range(3)]
        bad = {"id": "long", "question": "q", "candidates": ["a", long, "b"]}
    else:
        good = [{"id": f"g{i}", "prompt": "p", "response": f"r{i}"} for i in range(3)]
        bad = {"id": "long", "prompt": "p", "responses": ["r", long]}
    lines = [json.dumps(good[0]), json.dumps(bad), "{not json", json.dumps(good[1]), json.dumps(good[2])]
    inp.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--model", str(model_dirs["qwen2-tied"]), "--input", str(inp), "--output", str(out),
              "--max-tokens", "8", "--n", "2"] if command == "score" else
             [command, "--model", str(model_dirs["qwen2-tied"]), "--input", str(inp), "--output", str(out),
              "--max-tokens", "8"])
    assert exit_info.value.code == 1
    assert "2 item(s) failed" in capsys.readouterr().err
    got = {r["id"]: r for r in records(out)}
    assert set(got) == {"g0", "g1", "g2", "long", "line-3"}
    assert "error" not in got["g0"] and "error" not in got["g2"]
    assert "item 'long'" in got["long"]["error"] and "max model length" in got["long"]["error"]
    assert "in.jsonl:3: invalid JSON" in got["line-3"]["error"]


def test_input_that_is_not_utf8_is_named_by_file_and_line(tmp_path, model_dirs, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(b'{"id": "a", "question": "q", "candidates": ["x", "y"]}\n'
                    b'{"id": "b", "question": "\xff\xfe", "candidates": ["x", "y"]}\n')
    out = tmp_path / "out.jsonl"
    with pytest.raises(SystemExit) as exit_info:
        main(["judge", "--model", str(model_dirs["qwen2-tied"]), "--input", str(inp), "--output", str(out),
              "--max-tokens", "4", "--on-error", "stop"])
    assert exit_info.value.code == 2
    assert "in.jsonl:2: not UTF-8" in capsys.readouterr().err


def test_the_shipped_demo_judge_judges_from_the_command_line(tmp_path):
    """Its compact template comes from its directory: with the built-in one its prompts would not fit."""
    from kojudge.demo.run import SHIPPED_JUDGE

    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"id": "a", "question": "What is 2 + 3?", "candidates": ["5", "6"]}) + "\n")
    out = tmp_path / "out.jsonl"
    main(["judge", "--model", str(SHIPPED_JUDGE), "--input", str(inp), "--output", str(out), "--max-tokens", "64"])
    assert records(out)[0]["judge_calls"] == 1


def test_import_shortens_openmp_spinning_unless_the_user_chose():
    """GOMP_SPINCOUNT must be set before torch loads libgomp, so kojudge sets it on import; a
    user's own value is kept."""
    code = "import kojudge, os; print(os.environ['GOMP_SPINCOUNT'])"
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    ours = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    theirs = subprocess.run([sys.executable, "-c", code], env={**env, "GOMP_SPINCOUNT": "7"},
                            capture_output=True, text=True)
    assert (ours.stdout.strip(), theirs.stdout.strip()) == ("10000", "7")
