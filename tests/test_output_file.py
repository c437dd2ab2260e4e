# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Commands that write a file at a path the user names never lose the user's files (peft_mft.tools.output_file)."""

import json

import pytest

from peft_mft.tools.output_file import (
    OutputFileError,
    check_output_files,
    json_report_with,
    png_metadata,
    png_text,
    png_written_by,
    text_starting_with,
)

from .hand_masks import hand_masked_llama
from .test_cli import assert_bad_input, run


COMMAND = "python -m benchmarks.example"


def save_png(path, metadata=None):
    """A real matplotlib PNG, tagged with `metadata` (matplotlib's own Software tag without it)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(1, 1))
    figure.add_subplot().plot([0, 1])
    figure.savefig(path, format="png", metadata=metadata)


def test_a_new_path_may_be_written(tmp_path):
    check_output_files([tmp_path / "new.json", tmp_path / "new.md"], COMMAND, json_report_with("rows"))


def test_an_existing_file_of_the_user_is_refused_unless_overwrite(tmp_path):
    user_file = tmp_path / "result.json"
    user_file.write_text('{"mine": 1}')
    with pytest.raises(OutputFileError, match="result.json' exists and is not an earlier output of python -m bench"):
        check_output_files([user_file], COMMAND, json_report_with("rows"))
    check_output_files([user_file], COMMAND, json_report_with("rows"), overwrite=True)
    assert user_file.read_text() == '{"mine": 1}'  # checking writes nothing


def test_an_earlier_report_is_recognised_by_its_fields(tmp_path):
    report = tmp_path / "r.json"
    report.write_text(json.dumps({"benchmark": "example", "rows": []}))
    check_output_files([report], COMMAND, json_report_with("rows", benchmark="example"))
    with pytest.raises(OutputFileError):
        check_output_files([report], COMMAND, json_report_with("rows", benchmark="other"))
    for text in ("[1, 2]", "not json", ""):
        report.write_text(text)
        with pytest.raises(OutputFileError):
            check_output_files([report], COMMAND, json_report_with("rows"))


def test_a_table_is_recognised_by_its_first_words(tmp_path):
    table = tmp_path / "t.md"
    table.write_text("Seconds per profiled step (...)\n| a |")
    check_output_files([table], COMMAND, text_starting_with("Seconds per profiled step"))
    for text in ("My seconds per profiled step", ""):
        table.write_text(text)
        with pytest.raises(OutputFileError):
            check_output_files([table], COMMAND, text_starting_with("Seconds per profiled step"))


def test_companions_count_as_the_earlier_output_only_beside_it(tmp_path):
    report, table = tmp_path / "r.json", tmp_path / "r.md"
    table.write_text("my own table")
    with pytest.raises(OutputFileError, match="r.md' exists"):  # no earlier report beside it: the user's
        check_output_files([report, table], COMMAND, json_report_with("rows"))
    report.write_text(json.dumps({"rows": []}))
    check_output_files([report, table], COMMAND, json_report_with("rows"))


def test_a_folder_an_input_or_an_inputs_existing_file_is_refused_even_with_overwrite(tmp_path):
    (tmp_path / "adapter").mkdir()
    weights = tmp_path / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(b"weights")
    cases = [(tmp_path / "adapter", "is a folder"), (weights, "is a file of the input")]
    for path, reason in cases:
        with pytest.raises(OutputFileError, match=reason):
            check_output_files([path], COMMAND, lambda p: True, inputs=[tmp_path / "adapter"], overwrite=True)
    with pytest.raises(OutputFileError, match="is the input"):
        check_output_files([weights], COMMAND, lambda p: True, inputs=[weights], overwrite=True)
    check_output_files([tmp_path / "adapter" / "masks.png"], COMMAND, png_written_by(COMMAND),
                       inputs=[tmp_path / "adapter"])  # a new file beside the input replaces nothing


def test_png_tag_tells_a_commands_plot_from_any_other_png(tmp_path):
    pytest.importorskip("matplotlib")
    ours, other, plain = tmp_path / "ours.png", tmp_path / "other.png", tmp_path / "plain.png"
    save_png(ours, png_metadata(COMMAND))
    save_png(other)
    plain.write_bytes(b"\x89PNG\r\n\x1a\n")  # a signature and nothing else
    assert png_text(ours)["Software"] == COMMAND and png_text(other)["Software"].startswith("Matplotlib")
    assert [png_written_by(COMMAND)(p) for p in (ours, other, plain, tmp_path / "absent.png")] == [
        True, False, False, False]
    assert png_text(tmp_path) == {}


# ---- peft-mft analyze --plot ---------------------------------------------------------------------------------------


@pytest.fixture
def adapter(tmp_path):
    folder = tmp_path / "adapter"
    hand_masked_llama().save_pretrained(folder)
    return folder


def test_analyze_plot_never_replaces_a_file_of_the_adapter(capsys, adapter):
    weights = adapter / "adapter_model.safetensors"
    before = weights.read_bytes()
    for extra in ([], ["--overwrite"]):
        assert_bad_input(capsys, ["analyze", adapter, "--plot", weights, *extra], "is a file of the input")
    assert weights.read_bytes() == before


def test_analyze_plot_refuses_a_users_file_and_replaces_its_own(capsys, adapter, tmp_path):
    pytest.importorskip("matplotlib")
    notes = tmp_path / "notes.png"
    notes.write_text("my notes")
    assert_bad_input(capsys, ["analyze", adapter, "--plot", notes], "notes.png' exists and is not an earlier output")
    assert notes.read_text() == "my notes"
    plot = tmp_path / "masks.png"
    for _ in range(2):  # the second run replaces the first run's plot
        code, _, _ = run(capsys, "analyze", adapter, "--plot", plot)
        assert code == 0 and png_written_by("peft-mft analyze")(plot)
    code, _, _ = run(capsys, "analyze", adapter, "--plot", notes, "--overwrite")
    assert code == 0 and png_written_by("peft-mft analyze")(notes)


def test_analyze_overwrite_needs_a_plot(capsys, adapter):
    assert_bad_input(capsys, ["analyze", adapter, "--overwrite"], "--overwrite applies to --plot only")
