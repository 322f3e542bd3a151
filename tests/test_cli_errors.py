"""Bad input ends with one line that says what to do: no traceback, exit status 2."""

import json

import pytest

from secptune.cli import main


def run_cli(capsys, *args):
    code = main(["infer", *args])
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines()


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"text": "a great movie", "label": 1}) + "\n")
    return str(path)


def assert_one_line_error(code, lines, *needles):
    errors = [l for l in lines if l.startswith("secptune: error:")]
    assert code == 2
    assert len(errors) == 1, lines
    assert not any("Traceback" in l for l in lines)
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_missing_checkpoint(capsys, data_file):
    code, lines = run_cli(capsys, "--model", "/no/such/model", "--data", data_file,
                          "--template", "{text} It was {mask}", "--verbalizer", "bad,great")
    assert_one_line_error(code, lines, "no such directory", "tiny-llama")


def test_unknown_model_type(capsys, data_file, tmp_path):
    from transformers import GPT2Config

    model_dir = tmp_path / "gpt2"
    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(model_dir)
    code, lines = run_cli(capsys, "--model", str(model_dir), "--data", data_file,
                          "--template", "{text} It was {mask}", "--verbalizer", "bad,great")
    assert_one_line_error(code, lines, "'gpt2' is not supported", "llama")


@pytest.mark.parametrize("template,needle", [("{text} It was", "{mask}"), ("It was {mask}", "{text}")])
def test_template_without_placeholder(capsys, data_file, template, needle):
    code, lines = run_cli(capsys, "--model", "tiny-llama", "--data", data_file,
                          "--template", template, "--verbalizer", "bad,great")
    assert_one_line_error(code, lines, needle)


def test_multi_token_verbalizer(capsys, data_file):
    code, lines = run_cli(capsys, "--model", "tiny-roberta", "--data", data_file,
                          "--template", "{text} It was {mask} .", "--verbalizer", "bad,xylophonequartz")
    assert_one_line_error(code, lines, "xylophonequartz", "single tokens")


def test_sequence_too_long(capsys, tmp_path):
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"text": "the movie was great " * 200, "label": 1}) + "\n")
    code, lines = run_cli(capsys, "--model", "tiny-llama", "--data", str(path),
                          "--template", "{text} It was {mask}", "--verbalizer", "bad,great")
    assert_one_line_error(code, lines, "allows 128", "shorten")


def test_missing_data_file(capsys):
    code, lines = run_cli(capsys, "--model", "tiny-llama", "--data", "/no/data.jsonl",
                          "--template", "{text} It was {mask}", "--verbalizer", "bad,great")
    assert_one_line_error(code, lines, "does not exist")


def test_exact_secure_is_refused(capsys, data_file):
    code, lines = run_cli(capsys, "--model", "tiny-llama", "--data", data_file, "--mode", "secure", "--exact",
                          "--template", "{text} It was {mask}", "--verbalizer", "bad,great")
    assert_one_line_error(code, lines, "--exact")


def test_infer_json_output(capsys, data_file):
    code = main(["infer", "--model", "tiny-roberta", "--data", data_file, "--template", "{text} It was {mask} .",
                 "--verbalizer", "bad,great", "--mode", "plain", "--exact", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert len(out["scores"]) == 1 and len(out["scores"][0]) == 2
    assert out["pred"] == [int(out["scores"][0][1] > out["scores"][0][0])]
    assert out["labels"] == [1] and out["accuracy"] in (0.0, 1.0)
    assert out["wall_s"] > 0 and set(out["comm"]) == {"owner", "server", "dealer"}


def test_the_tests_insecure_generators_are_refused(capsys, data_file, monkeypatch):
    monkeypatch.setenv("SECPTUNE_TEST_ONLY_RNG", "zero")
    code, err = run_cli(capsys, "--model", "tiny-llama", "--data", data_file, "--template", "{text} It was {mask}",
                        "--verbalizer", "bad,great")
    assert code == 2 and len(err) == 1 and "SECPTUNE_TEST_ONLY_RNG" in err[0] and "unset" in err[0]


def test_an_example_limit_of_zero_is_refused(capsys, data_file):
    """A limit of 0 used to read one example (and report its accuracy as the run's)."""
    code, lines = run_cli(capsys, "--model", "tiny-llama", "--data", data_file, "--limit", "0",
                          "--template", "{text} It was {mask}", "--verbalizer", "bad,great")
    assert_one_line_error(code, lines, "at least 1", "--limit")
