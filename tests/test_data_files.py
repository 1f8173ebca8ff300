"""Tests for musplit.files: atomic writes leave nothing behind on failure; outputs are checked."""

from pathlib import Path

import pytest

from musplit.errors import InputError
from musplit.files import (
    atomic_write,
    check_output,
    move_into_place,
    refuse_existing,
    sibling,
    temp_path,
)


def test_atomic_write_moves_the_file_into_place(tmp_path):
    out = tmp_path / "a.json"
    with atomic_write(out) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".a.json.partial-")
        tmp.write_text("new")
        assert not out.exists()  # nothing at the final name until the block ends
    assert out.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_atomic_write_leaves_no_partial_file_when_the_writer_raises(tmp_path):
    out = tmp_path / "a.json"
    out.write_text("old")
    with pytest.raises(OSError, match="disk full"), atomic_write(out) as tmp:
        tmp.write_text("half")
        raise OSError("disk full")
    assert out.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_atomic_write_removes_a_partial_directory(tmp_path):
    out = tmp_path / "store.zarr"
    with pytest.raises(RuntimeError), atomic_write(out) as tmp:
        (tmp / "sub").mkdir(parents=True)
        (tmp / "sub" / "chunk").write_bytes(b"x")
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_move_into_place_replaces_a_directory_only_when_complete(tmp_path):
    out = tmp_path / "s.zarr"
    out.mkdir()
    (out / "zarr.json").write_text("old")
    tmp = temp_path(out, "partial")
    tmp.mkdir()
    (tmp / "zarr.json").write_text("new")
    move_into_place(tmp, out)
    assert (out / "zarr.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


def test_refuse_existing_refuses_without_overwrite(tmp_path):
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    b.write_bytes(b"x")
    refuse_existing([a], overwrite=False)  # nothing there: fine
    with pytest.raises(InputError, match="b.tif already exists.*--overwrite"):
        refuse_existing([a, b], overwrite=False)
    refuse_existing([a, b], overwrite=True)
    link = tmp_path / "dangling.tif"
    link.symlink_to(tmp_path / "missing")
    with pytest.raises(InputError, match="already exists"):
        refuse_existing([link], overwrite=False)


def test_check_output(tmp_path):
    src = tmp_path / "in.tif"
    src.write_bytes(b"x")
    with pytest.raises(InputError, match="inside the input"):
        check_output(src, True, [src], "tiff")
    with pytest.raises(InputError, match="already exists"):
        check_output(src, False, (), "tiff")
    (tmp_path / "d").mkdir()
    with pytest.raises(InputError, match="is a directory"):
        check_output(tmp_path / "d", True, (), "tiff")
    with pytest.raises(InputError, match="not a Zarr store"):
        check_output(tmp_path / "d", True, (), "zarr")
    out = check_output(tmp_path / "new" / "o.tif", False, (), "tiff")
    assert out.parent.is_dir() and not out.exists()


def test_sibling():
    assert sibling("pred.ome.tif", "_std") == Path("pred_std.ome.tif")
    assert sibling("dir/pred.zarr", "_std") == Path("dir/pred_std.zarr")
    assert sibling("P.TIFF", "_std") == Path("P_std.TIFF")
    with pytest.raises(InputError, match=".tif/.tiff or .zarr"):
        sibling("pred.npy", "_std")


def test_old_private_names_still_import():
    from musplit.data import io

    assert io._check_output is check_output
    assert io._temp_path is temp_path
    assert io._move_into_place is move_into_place


# -- the writers of reports, configs, metrics and figures go through musplit.files ----------
def _text_writers():
    from musplit.cli.outputs import write_text
    from musplit.demo import write_text_atomic

    return {"demo.write_text_atomic": write_text_atomic, "cli.outputs.write_text": write_text}


@pytest.mark.parametrize("name", ["demo.write_text_atomic", "cli.outputs.write_text"])
def test_text_writers_keep_the_old_file_and_no_temporary_when_writing_fails(tmp_path, name):
    write = _text_writers()[name]
    out = tmp_path / "report.md"
    write(out, "old")
    before = out.read_bytes()
    # A lone surrogate cannot be encoded: the write fails after the file was opened.
    with pytest.raises(UnicodeEncodeError):
        write(out, "new \ud800")
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_save_figure_leaves_no_temporary_when_drawing_fails(tmp_path):
    from musplit.figures import save_figure

    class BrokenFigure:
        def savefig(self, path, **kwargs):
            Path(path).write_bytes(b"half a png")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_figure(BrokenFigure(), tmp_path / "fig.png")
    assert list(tmp_path.iterdir()) == []


def test_save_figure_keeps_the_format_of_the_final_name(tmp_path):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from musplit.figures import save_figure

    for name, magic in (("f.png", b"\x89PNG"), ("f.pdf", b"%PDF"), ("f", b"\x89PNG")):
        fig, ax = plt.subplots(figsize=(1, 1))
        ax.plot([0, 1])
        out = save_figure(fig, tmp_path / name, dpi=20)
        assert out.read_bytes().startswith(magic)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "f.pdf", "f.png"]
