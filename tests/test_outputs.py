"""Output paths: finished results and inputs are never replaced, writes are atomic, names stay inside --out."""

import errno
import os

import pytest

from fastgdr.errors import OutputError
from fastgdr.outputs import (
    atomic_write,
    atomic_write_text,
    check_name_part,
    check_out_dir,
    check_out_file,
    claim_outputs,
    remove_stale_temporaries,
)


@pytest.mark.parametrize("value", ["../../x", "a/b", "..", "a..b", ".hidden", "", "a\\b"])
def test_names_that_would_leave_the_output_folder_are_refused(value):
    with pytest.raises(OutputError, match="--method .* is not a plain name"):
        check_name_part(value, "--method")


def test_plain_names_pass():
    assert check_name_part("p28-R", "--method") == "p28-R"
    assert check_name_part("test", "--split") == "test"


def test_out_must_be_a_folder_or_a_file_as_asked(tmp_path):
    file = tmp_path / "file.txt"
    file.write_text("x")
    with pytest.raises(OutputError, match="is a file; it must be a folder"):
        check_out_dir(file)
    with pytest.raises(OutputError, match="inside .*file.txt, which is a file"):
        check_out_dir(file / "sub")
    with pytest.raises(OutputError, match="is a folder; it must name the file"):
        check_out_file(tmp_path)
    assert check_out_dir(tmp_path / "new") == tmp_path / "new"
    assert check_out_file(tmp_path / "new.onnx") == tmp_path / "new.onnx"


def test_existing_outputs_need_overwrite(tmp_path):
    done = tmp_path / "scores.json"
    done.write_text("{}")
    with pytest.raises(OutputError, match="already exists .*pass --overwrite"):
        claim_outputs([done, tmp_path / "other.csv"])
    assert claim_outputs([done, tmp_path / "other.csv"], overwrite=True) == [done]
    assert claim_outputs([tmp_path / "fresh.csv"]) == []


def test_inputs_are_never_outputs_even_with_overwrite(tmp_path):
    ckpt = tmp_path / "run" / "model_final.pth"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"weights")
    for output in (ckpt, tmp_path / "run" / ".." / "run" / "model_final.pth", tmp_path / "run"):
        with pytest.raises(OutputError, match="would overwrite the input --ckpt"):
            claim_outputs([output], inputs={"--ckpt": ckpt}, overwrite=True)
    link = tmp_path / "link.pth"
    os.link(ckpt, link)  # another name of the same file
    with pytest.raises(OutputError, match="would overwrite the input --ckpt"):
        claim_outputs([link], inputs={"--ckpt": ckpt}, overwrite=True)
    with pytest.raises(OutputError, match="are the same file"):
        claim_outputs([tmp_path / "a.pth", tmp_path / "." / "a.pth"])
    assert ckpt.read_bytes() == b"weights"


def test_atomic_write_keeps_the_previous_file_when_the_disk_is_full(tmp_path):
    path = tmp_path / "results.csv"
    atomic_write_text(path, "old\n")

    def full_disk(f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError, match=r"cannot write file .*results.csv: the disk is full; .* MiB free .*"
                                          r"the previous results.csv is unchanged"):
        atomic_write(path, full_disk)
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]  # no temporary left


def test_atomic_write_gives_the_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a.txt", "x")
        plain = tmp_path / "b.txt"
        plain.write_text("x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o644


def test_stale_temporaries_are_removed(tmp_path):
    stale = tmp_path / ".last_checkpoint.pth.1a2b3c4d.tmp"
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / ".notes.txt.tmp"
    other.write_text("not ours")
    assert remove_stale_temporaries(tmp_path, ["last_checkpoint.pth"]) == [stale]
    assert not stale.exists() and other.exists()
