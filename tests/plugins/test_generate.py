"""`generate` through the CLI and the SDK: streaming, logging a sample set, fitting long prompts."""

from __future__ import annotations

import json

from registry.sdk import Registry

LONG_PROMPT = "word " * 120  # 120 tokens against the fixture's 128 positions


def test_streaming_prints_what_the_json_returns(gpt2reg, imported_home):
    args = ["generate", "fx", "Once upon a time", "The sea", "--sampler", "top_p", "--seed", "5",
            "--max-new-tokens", "10", "--ignore-end-of-text", "--home", imported_home]
    document = gpt2reg(*args, "--json").json()
    streamed = gpt2reg(*args, "--stream")
    assert streamed.exit_code == 0, streamed
    assert streamed.stdout.splitlines() == [item["text"] for item in document["outputs"]]


def test_the_sdk_stream_yields_the_text_run_returns(imported_home):
    reg = Registry(imported_home)
    settings = dict(sampler="random", seed=3, max_new_tokens=8, ignore_end_of_text=True)
    events = list(reg.stream("fx", ["Hello there"], **settings))
    result = reg.run("generate", "fx", prompts=["Hello there"], **settings)
    assert "".join(e.text for e in events) == result.output["outputs"][0]["text"]
    assert [e.token_id for e in events if e.token_id is not None] == result.output["outputs"][0]["token_ids"]
    assert events[-1].finish_reason == "length"


def test_log_records_settings_and_a_table_of_outputs(gpt2reg, imported_home):
    import mlflow

    result = gpt2reg("generate", "fx", "Hi", "Bye", "--max-new-tokens", "4", "--repetition-penalty", "1.2",
                     "--log", "--json", "--home", imported_home)
    assert result.exit_code == 0, result
    run_id = result.json()["run_id"]
    client = mlflow.MlflowClient(Registry(imported_home).home.tracking_uri)
    run = client.get_run(run_id)
    assert run.data.params["repetition_penalty"] == "1.2" and run.data.params["model"] == "fx/1"
    table = json.loads(open(client.download_artifacts(run_id, "generations.json")).read())
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert [row["prompt"] for row in rows] == ["Hi", "Bye"]
    assert [row["text"] for row in rows] == [item["text"] for item in result.json()["outputs"]]


def test_truncate_left_keeps_the_end_of_a_long_prompt(gpt2reg, imported_home):
    refused = gpt2reg("generate", "fx", LONG_PROMPT, "--max-new-tokens", "16", "--home", imported_home)
    assert refused.exit_code == 2 and "--truncate left" in refused.stderr
    kept = gpt2reg("generate", "fx", LONG_PROMPT, "--max-new-tokens", "16", "--truncate", "left", "--json",
                   "--home", imported_home)
    assert kept.exit_code == 0, kept
    from backends.tokenizer import decode, encode

    ids = encode(LONG_PROMPT)
    assert kept.json()["truncated"] == [{"prompt": 0, "dropped_tokens": len(ids) - (128 - 16)}]
    tail_text = decode(ids[len(ids) - 112:])
    assert encode(tail_text) == ids[len(ids) - 112:]
    tail = gpt2reg("generate", "fx", tail_text, "--max-new-tokens", "16", "--json", "--home", imported_home)
    assert kept.json()["outputs"][0]["token_ids"] == tail.json()["outputs"][0]["token_ids"]
