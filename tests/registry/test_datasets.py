"""What a data set is to the registry: a digest of its bytes, its lines and size, and its role."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from registry.datasets import describe, measured_on, used_by
from registry.options import option


def test_a_file_is_told_apart_by_its_content_not_its_name(tmp_path):
    first, same, other = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "c.txt"
    first.write_text("one\ntwo\n")
    same.write_text("one\ntwo\n")
    other.write_text("one\ntwo\nthree")  # a last line without its newline still counts
    a, b, c = (describe(path, "training") for path in (first, same, other))
    assert a.digest == b.digest != c.digest and len(a.digest) == 16
    assert (a.rows, a.bytes, c.rows, c.bytes) == (2, 8, 3, 13)
    assert a.name == "a.txt" and a.source == str(first.resolve()) and a.context == "training"


def test_a_folder_digest_covers_its_files_and_their_names(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "x.txt").write_text("alpha\n")
    (folder / "y.txt").write_text("beta\n")
    before = describe(folder, "validation")
    assert (before.rows, before.bytes, before.name) == (2, 11, "corpus")
    (folder / "y.txt").rename(folder / "z.txt")
    assert describe(folder, "validation").digest != before.digest


def test_options_name_their_data_sets_once_each_in_declaration_order(tmp_path):
    train, held = tmp_path / "train.txt", tmp_path / "held.txt"
    train.write_text("t\n")
    held.write_text("h\n")

    @dataclass
    class Options:
        data: list[str] = option(default_factory=list, path=True, dataset="training", help="Text.")
        val_data: list[str] | None = option(path=True, dataset="validation", help="Held-out text.")
        notes: list[str] | None = option(path=True, help="Not a data set.")

    uses = used_by(Options, Options(data=[str(train), str(train)], val_data=[str(held)], notes=[str(held)]))
    assert [(use.name, use.context) for use in uses] == [("train.txt", "training"), ("held.txt", "validation")]
    assert used_by(Options, Options()) == []


@pytest.mark.parametrize("bad", [dict(dataset="testing", path=True), dict(dataset="training")])
def test_a_data_set_role_must_be_known_and_name_files(bad):
    with pytest.raises(ValueError, match="dataset="):
        option(help="x", **bad)


def test_each_figure_is_tied_to_the_data_it_was_measured_on(tmp_path):
    for name in ("train.txt", "held.txt", "eval.txt"):
        (tmp_path / name).write_text("x\n")
    train = describe(tmp_path / "train.txt", "training")
    held = describe(tmp_path / "held.txt", "validation")
    scored = describe(tmp_path / "eval.txt", "evaluation")
    assert measured_on("train_loss", [train, held]) == train
    assert measured_on("perplexity", [train, held]) == held
    assert measured_on("perplexity", [train, held, scored]) == scored
    assert measured_on("size_bytes", [train, held]) is None
    assert measured_on("greedy_tokens_per_second", [scored]) is None
    assert measured_on("perplexity", []) is None
