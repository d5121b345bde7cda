"""`zaya-rt rsa` on the embedded tiny model: the JSON report after every round, resumption from the last complete
round with the same --out, refusal to mix reports, the plot, and clear errors for bad problem files."""

import json

from zaya_rt.cli import main

ARGS = ["rsa", "--population", "2", "--tails", "2", "--rounds", "1", "--budget", "4", "--tail-tokens", "2",
        "--page-size", "8", "--quiet"]


def _problems(tmp_path):
    path = tmp_path / "problems.jsonl"
    path.write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n\n"
                    + json.dumps({"problem": "Half of 1?", "answer": "\\frac{1}{2}"}) + "\n")
    return str(path)


def test_report_resume_and_plot(tmp_path, capsys):
    problems, out, plot = _problems(tmp_path), str(tmp_path / "report.json"), tmp_path / "rsa.png"
    assert main(ARGS + ["--problems", problems, "--out", out, "--plot", str(plot)]) == 0
    full = json.loads(open(out).read())
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [len(p["result"]["rounds"]) for p in full["problems"]] == [2, 2]
    for entry in full["problems"]:
        for t, scores in enumerate(entry["scores"]):
            answers = [c["answer"] for c in entry["result"]["rounds"][t]]
            assert scores["mean_accuracy"] == sum(a == entry["answer"] for a in answers) / 2
            assert scores["generated_tokens"] == 8
    assert [r["round"] for r in full["summary"]] == [0, 1] and full["summary"][1]["problems"] == 2

    # an interrupted run: problem 2 lost its last round; problem 1's rounds must not be generated again
    cut = json.loads(json.dumps(full))
    cut["problems"][0]["result"]["rounds"][0][0]["text"] = "kept, not regenerated"
    second = cut["problems"][1]
    for key in ("rounds", "stats"):
        second["result"][key] = second["result"][key][:1]
    second["scores"] = second["scores"][:1]
    open(out, "w").write(json.dumps(cut))
    assert main(ARGS + ["--problems", problems, "--out", out]) == 0
    resumed = json.loads(open(out).read())
    assert resumed["problems"][0]["result"]["rounds"][0][0]["text"] == "kept, not regenerated"
    assert resumed["problems"][1]["result"]["rounds"] == full["problems"][1]["result"]["rounds"]

    capsys.readouterr()
    assert main(ARGS[:-1] + ["--seed", "5", "--problems", problems, "--out", out]) == 2
    assert "another model, config or problem set" in capsys.readouterr().err


def test_bad_problem_files_and_config(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "ok"}\n{"question": "no problem key"}\n')
    assert main(ARGS + ["--problems", str(bad)]) == 2
    assert "bad.jsonl: line 2" in capsys.readouterr().err
    bad.write_text("not json\n")
    assert main(ARGS + ["--problems", str(bad)]) == 2
    assert "line 1: not valid JSON" in capsys.readouterr().err
    assert main(ARGS + ["--problem", "1+1?", "--tails", "3"]) == 2
    assert "tails" in capsys.readouterr().err
