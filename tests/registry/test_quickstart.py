"""The main job, shortened: every step registered, perplexity at least halved."""


def test_quickstart_registers_every_step_and_halves_perplexity(gpt2reg, tmp_path):
    home = tmp_path / "home"
    result = gpt2reg("quickstart", "--steps", 40, "--json", "--home", home)
    assert result.exit_code == 0, result
    summary = result.json()
    base, tuned = summary["variants"]
    assert base["operation"] == "create" and tuned["operation"] == "finetune" and tuned["parents"] == [base["ref"]]
    assert tuned["metrics"]["perplexity"] < 0.5 * base["metrics"]["perplexity"]
    assert [e["operation"] for e in summary["lineage"]["edges"]] == ["finetune"]

    human = gpt2reg("lineage", tuned["ref"], "--home", home)
    assert base["ref"] in human.stdout and "perplexity" in human.stdout
