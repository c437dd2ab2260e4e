# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Commands that write a folder (harden, merge, export) never lose the user's files (peft_mft.tools.output_folder)."""

import json

import pytest

from peft_mft.tools.export import export_compact_adapter
from peft_mft.tools.harden import harden_adapter
from peft_mft.tools.merge import merge_to_folder
from peft_mft.tools.output_folder import OUTPUT_MARKER_NAME, OutputFolderError

from .conftest import make_llama
from .hand_masks import hand_masked_llama
from .test_cli import assert_bad_input, run


def tree(folder):
    """{relative path: bytes} of every file under `folder`, hidden ones included."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def project(tmp_path, capsys):
    """The issue's layout: proj/soft (an adapter), proj/notes.txt, proj/other_run/, proj/base (a base model)."""
    proj = tmp_path / "proj"
    hand_masked_llama().save_pretrained(proj / "soft")
    (proj / "notes.txt").write_text("my notes")
    (proj / "other_run").mkdir()
    (proj / "other_run" / "result.json").write_text("{}")
    make_llama().save_pretrained(proj / "base")
    capsys.readouterr()  # the saves' progress bars are not the commands' output
    return proj


def test_output_containing_the_input_is_refused_and_nothing_changes(capsys, project):
    before = tree(project)
    assert_bad_input(capsys, ["harden", project / "soft", "--sparsity", "1%", project], "contains the input")
    assert_bad_input(capsys, ["merge", project / "soft", project, "--base", project / "base"], "contains the input")
    assert_bad_input(capsys, ["export", project / "soft", "--format", "fp16", project], "contains the input")
    assert tree(project) == before


def test_output_equal_to_or_inside_an_input_is_refused(capsys, project):
    before = tree(project)
    assert_bad_input(capsys, ["export", project / "soft", "--format", "int8", project / "soft"], "is the input")
    assert_bad_input(capsys, ["harden", project / "soft", "--sparsity", "1%", project / "soft" / "hard"], "inside")
    assert_bad_input(capsys, ["merge", project / "soft", project / "base", "--base", project / "base"], "is the input")
    assert_bad_input(capsys, ["merge", project / "soft", project / "soft", "--base", project / "base"], "is the input")
    assert tree(project) == before
    with pytest.raises(OutputFolderError, match="is the input"):
        export_compact_adapter(project / "soft", project / "soft", "soft-int8", overwrite=True)  # never, even so
    assert tree(project) == before


def test_non_empty_folder_of_something_else_needs_overwrite(capsys, project, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "adapter_model.safetensors").write_bytes(b"not yours")
    before = tree(tmp_path / "mine")
    for argv in (["harden", project / "soft", "--sparsity", "1%"], ["export", project / "soft", "--format", "fp16"]):
        assert_bad_input(capsys, [*argv, tmp_path / "mine"], "not an earlier output")
    assert_bad_input(capsys, ["merge", project / "soft", tmp_path / "mine", "--base", project / "base"], "--overwrite")
    assert tree(tmp_path / "mine") == before
    for call in (
        lambda: harden_adapter(project / "soft", 0.01, tmp_path / "mine"),
        lambda: export_compact_adapter(project / "soft", tmp_path / "mine", "soft-fp16"),
        lambda: merge_to_folder(str(project / "base"), str(project / "soft"), str(tmp_path / "mine"), progress=False),
    ):
        with pytest.raises(OutputFolderError, match="not an earlier output"):
            call()
    assert tree(tmp_path / "mine") == before
    (tmp_path / "file").write_text("x")
    assert_bad_input(capsys, ["harden", project / "soft", "--sparsity", "1%", tmp_path / "file"], "is a file")


def test_overwrite_replaces_same_named_files_and_keeps_every_other_one(capsys, project, tmp_path):
    mine = tmp_path / "mine"
    (mine / ".git").mkdir(parents=True)
    (mine / ".git" / "HEAD").write_text("ref: refs/heads/main")
    (mine / "adapter_model.safetensors").write_bytes(b"old")
    (mine / "keep.txt").write_text("keep me")
    code, _, _ = run(capsys, "harden", project / "soft", "--sparsity", "1%", mine, "--overwrite")
    assert code == 0
    assert (mine / ".git" / "HEAD").read_text() == "ref: refs/heads/main" and (
        mine / "keep.txt"
    ).read_text() == "keep me"
    assert (mine / "adapter_model.safetensors").read_bytes() != b"old"
    assert json.loads((mine / "adapter_config.json").read_text())["mask_type"] == "hard"


def test_earlier_output_is_replaced_keeping_files_the_user_added(capsys, project, tmp_path):
    out = tmp_path / "hard"
    assert run(capsys, "harden", project / "soft", "--sparsity", "1%", out)[0] == 0
    assert json.loads((out / OUTPUT_MARKER_NAME).read_text())["command"] == "harden"
    (out / "my_eval.json").write_text("{}")
    (out / "stale-from-last-run.bin").write_bytes(b"x")  # pretend the earlier run wrote it
    marker = json.loads((out / OUTPUT_MARKER_NAME).read_text())
    (out / OUTPUT_MARKER_NAME).write_text(
        json.dumps({**marker, "entries": marker["entries"] + ["stale-from-last-run.bin"]})
    )
    assert run(capsys, "harden", project / "soft", "--sparsity", "2%", out)[0] == 0
    assert json.loads((out / "adapter_config.json").read_text())["sparsity"] == 0.02
    assert (out / "my_eval.json").is_file() and not (out / "stale-from-last-run.bin").exists()
    # an earlier output of another command is not this command's to replace
    assert_bad_input(capsys, ["export", out, "--format", "bits", out.parent / "hard"], "is the input")
    assert run(capsys, "export", out, "--format", "bits", tmp_path / "bits")[0] == 0
    assert_bad_input(
        capsys, ["harden", project / "soft", "--sparsity", "1%", tmp_path / "bits"], "not an earlier output"
    )


def test_empty_existing_folder_is_used(capsys, project, tmp_path):
    (tmp_path / "empty").mkdir()
    assert run(capsys, "merge", project / "soft", tmp_path / "empty", "--base", project / "base")[0] == 0
    assert (tmp_path / "empty" / "config.json").is_file()
