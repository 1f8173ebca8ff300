"""Output locations that cannot take the result (issue 17: nothing silent, nothing lost).

An unwritable folder, a file used as a folder or a disk too full is refused in one line, exit
status 2, before the model is loaded (or a step trained); a disk that fills up while writing
is one line too and leaves no temporary behind; the hidden temporaries a killed run left
behind are removed the next time the same output is written, and only then.
"""

import errno
import os
import stat

import numpy as np
import pytest

from musplit import runtime
from musplit.cli import main
from musplit.data.io import write_tiff
from musplit.errors import InputError
from musplit.files import (
    RUN_STARTED,
    atomic_write,
    check_free_space,
    check_writable,
    remove_stale_temporaries,
)
from musplit.splitter import Splitter
from tests.test_cli import _tiny_checkpoint

LONG_AGO = RUN_STARTED - 10 * 24 * 3600  # a leftover of a run killed ten days ago


def run(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line(err: str) -> str:
    """The one line of ``err`` besides the progress bar (which predictions that ran show)."""
    lines = [x for x in err.replace("\r", "\n").splitlines()
             if x.strip() and not x.startswith("predict:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def model_and_image(tmp_path):
    ckpt = _tiny_checkpoint(tmp_path / "m.ckpt")
    img = (np.random.default_rng(0).random((2, 40, 40, 1)) * 1000).astype(np.float32)
    return ckpt, write_tiff(tmp_path / "in.tif", img)


@pytest.fixture
def loads(monkeypatch):
    """Every model load and every prediction of the run, recorded."""
    calls = []
    load = Splitter.load.__func__

    def spy_load(cls, *a, **k):
        calls.append("load")
        return load(cls, *a, **k)

    def spy(name):
        original = getattr(Splitter, name)

        def wrapped(self, *a, **k):
            calls.append(name)
            return original(self, *a, **k)

        return wrapped

    monkeypatch.setattr(Splitter, "load", classmethod(spy_load))
    for name in ("predict", "predict_to_zarr"):
        monkeypatch.setattr(Splitter, name, spy(name))
    return calls


def read_only(folder, monkeypatch):
    """Make ``folder`` read-only. Root may write into it anyway (the tests may run as root),
    so file creation is then refused as the kernel refuses it to other users: ``os.open``
    with O_CREAT in a folder without the owner's write bit fails with EACCES."""
    folder.mkdir(exist_ok=True)
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if os.geteuid() != 0:
        return
    real_open = os.open

    def fake_open(path, flags, *args, **kwargs):
        parent = os.path.dirname(os.path.abspath(path))
        if flags & os.O_CREAT and os.path.isdir(parent) and \
                not os.stat(parent).st_mode & stat.S_IWUSR:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)


# -- row 5: unwritable or misplaced outputs are refused before any work ---------------------
@pytest.mark.parametrize("name", ["x.tif", "x.zarr", "new/x.tif", "new/deeper/x.zarr"])
def test_predict_into_a_read_only_folder_is_refused_before_the_model_loads(
        tmp_path, capsys, monkeypatch, model_and_image, loads, name):
    ckpt, image = model_and_image
    ro = tmp_path / "ro"
    read_only(ro, monkeypatch)
    try:
        code, _, err = run(["predict", ckpt, image, "--out", ro / name, "--std",
                            "--samples", "2"], capsys)
        line = one_line(err)
        assert code == 2
        assert str(ro / name) in line and f"no file can be created in {ro}" in line
        assert "Permission denied" in line
        assert loads == []  # refused before the model was loaded, so before any prediction
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize("name", ["x.tif", "x.zarr", "sub/x.tif"])
def test_predict_into_a_file_used_as_a_folder_is_refused_before_the_model_loads(
        tmp_path, capsys, model_and_image, loads, name):
    ckpt, image = model_and_image
    blocker = tmp_path / "file.tif"
    blocker.write_bytes(b"not a folder")
    code, _, err = run(["predict", ckpt, image, "--out", blocker / name], capsys)
    line = one_line(err)
    assert code == 2 and loads == []  # refused before the model was loaded
    assert str(blocker / name) in line and f"{blocker} is a file" in line
    assert blocker.read_bytes() == b"not a folder"


def _disk(monkeypatch, free):
    import shutil

    real = shutil.disk_usage

    def fake(path):
        u = real(path)
        return type(u)(u.total, u.total - free, free)

    monkeypatch.setattr(shutil, "disk_usage", fake)


@pytest.mark.parametrize("name", ["p.tif", "p.zarr"])
def test_predict_onto_a_full_disk_is_refused_before_predicting(
        tmp_path, capsys, monkeypatch, model_and_image, loads, name):
    ckpt, image = model_and_image
    # mean and std of 2 frames x 40 x 40 x 2 channels, float32
    need = runtime.prediction_file_bytes(2, 40, 40, n_channels=2, n_files=2)
    _disk(monkeypatch, need - 1)
    code, _, err = run(["predict", ckpt, image, "--out", tmp_path / name, "--std",
                        "--samples", "2"], capsys)
    line = one_line(err)
    assert code == 2 and str(tmp_path / name) in line and "not enough free space" in line
    assert "the prediction and its std" in line
    assert "predict" not in loads and "predict_to_zarr" not in loads
    assert not (tmp_path / name).exists()


def test_tight_free_space_is_a_warning_and_the_prediction_goes_on(
        tmp_path, capsys, monkeypatch, caplog, model_and_image):
    ckpt, image = model_and_image
    need = runtime.prediction_file_bytes(2, 40, 40, n_channels=2)
    _disk(monkeypatch, int(1.5 * need))
    code, _, err = run(["predict", ckpt, image, "--out", tmp_path / "p.tif"], capsys)
    assert code == 0, err
    assert (tmp_path / "p.tif").is_file()
    assert any("the disk may fill up" in r.getMessage() and r.levelname == "WARNING"
               for r in caplog.records)


def test_check_free_space_and_check_writable(tmp_path, monkeypatch):
    _disk(monkeypatch, 10_000)
    check_free_space(tmp_path / "a" / "b.tif", 4_000)  # fine
    with pytest.raises(InputError, match=r"b.tif: the output needs about 9.8 KiB, but .* "
                                         r"has 9.8 KiB free"):
        check_free_space(tmp_path / "a" / "b.tif", 10_001)
    assert check_writable(tmp_path / "new" / "x.tif") == tmp_path / "new" / "x.tif"
    assert list(tmp_path.iterdir()) == []  # the probe is gone, nothing was created


def _fill_disk_after(monkeypatch, module, name, nbytes):
    """``module.name`` (a writer) writes ``nbytes`` of its output, then the disk is full."""
    def full(path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"\0" * nbytes)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(module, name, full)


def test_a_disk_that_fills_up_while_writing_a_tiff_is_one_line(
        tmp_path, capsys, monkeypatch, model_and_image):
    import musplit.data.io.writers as writers

    ckpt, image = model_and_image
    _fill_disk_after(monkeypatch, writers.tifffile, "imwrite", 1000)
    out = tmp_path / "out" / "p.tif"
    code, _, err = run(["predict", ckpt, image, "--out", out], capsys)
    line = one_line(err)
    assert code == 2 and f"cannot write {out}: No space left on device" in line
    assert list(out.parent.iterdir()) == []  # no half-written temporary


def test_a_disk_that_fills_up_while_writing_a_zarr_store_is_one_line(
        tmp_path, capsys, monkeypatch, model_and_image):
    from zarr.storage import LocalStore

    ckpt, image = model_and_image
    real_set = LocalStore.set

    async def full_set(self, key, value):
        if key.startswith("0/c"):  # the metadata fits; the first chunk does not
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return await real_set(self, key, value)

    monkeypatch.setattr(LocalStore, "set", full_set)
    out = tmp_path / "out" / "p.zarr"
    code, _, err = run(["predict", ckpt, image, "--out", out, "--std", "--samples", "2"],
                       capsys)
    line = one_line(err)
    assert code == 2 and f"cannot write {out}: No space left on device" in line
    assert list(out.parent.iterdir()) == []  # neither store's temporary is left


# -- row 10: leftovers of a killed run ------------------------------------------------------
def _leftover(path, folder=False, old=True):
    if folder:
        (path / "0" / "c").mkdir(parents=True)
        (path / "zarr.json").write_text("{}")
        (path / "0" / "c" / "0").write_bytes(b"chunk")
    else:
        path.write_bytes(b"half a file")
    if old:
        for p in [path, *path.rglob("*")]:
            os.utime(p, (LONG_AGO, LONG_AGO))
    return path


@pytest.mark.parametrize("name", ["p.tif", "p.zarr"])
def test_predict_removes_its_own_stale_leftovers_and_nothing_else(
        tmp_path, capsys, model_and_image, name):
    ckpt, image = model_and_image
    out = tmp_path / "out"
    out.mkdir()
    zarr = name.endswith(".zarr")
    stale = [_leftover(out / f".{name}.partial-0123abcd", zarr),
             _leftover(out / f".{name}.partial-89abcdef", zarr)]
    kept = [_leftover(out / f".other{name[1:]}.partial-deadbeef", zarr),  # another output's
            _leftover(out / f".{name}.partial-feedf00d", zarr, old=False),  # a running writer's
            _leftover(out / f".{name}.notes", False)]  # not a temporary name
    code, _, err = run(["predict", ckpt, image, "--out", out / name], capsys)
    assert code == 0, err
    assert (out / name).exists()
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)
    assert sorted(p.name for p in out.iterdir()) == sorted([name, *(p.name for p in kept)])


def test_stale_temporaries_rules(tmp_path):
    out = tmp_path / "s.zarr"
    aside = _leftover(tmp_path / ".s.zarr.old-0badc0de", folder=True)
    pid = _leftover(tmp_path / ".s.zarr.tmp-4242")
    # the output being replaced is the only copy while the output itself is missing
    assert remove_stale_temporaries(out) == [pid]
    assert aside.exists()
    out.mkdir()
    assert remove_stale_temporaries(out) == [aside]
    # a folder whose newest entry is recent is still being written, however old the folder
    busy = _leftover(tmp_path / ".s.zarr.partial-00000000", folder=True)
    (busy / "0" / "c" / "1").write_bytes(b"just now")
    assert remove_stale_temporaries(out) == []
    assert remove_stale_temporaries(out, started=RUN_STARTED + 10 ** 9) == [busy]


def test_atomic_write_and_checkpoints_clear_their_stale_leftovers(tmp_path):
    from musplit.checkpoints.format import atomic_torch_save

    split = tmp_path / "split.json"
    stale = _leftover(tmp_path / ".split.json.partial-abcdef01")
    with atomic_write(split) as tmp:
        tmp.write_text("{}")
    assert not stale.exists()
    ckpt = tmp_path / "last.ckpt"
    stale = [_leftover(tmp_path / ".last.ckpt.tmp-31337"),
             _leftover(tmp_path / ".last.ckpt.partial-abcdef01")]
    other = _leftover(tmp_path / ".best.ckpt.tmp-31337")
    atomic_torch_save({"a": 1}, ckpt)
    assert ckpt.is_file() and not any(p.exists() for p in stale) and other.exists()


# -- train --out ----------------------------------------------------------------------------
@pytest.fixture
def trainings(monkeypatch):
    """The trainings the command starts (none runs; each returns a made-up best path)."""
    import musplit.training

    calls = []

    def fake(cfg, out_dir, **kwargs):
        calls.append((out_dir, kwargs))
        return out_dir / "best.ckpt"

    monkeypatch.setattr(musplit.training, "train", fake)
    return calls


TRAIN = ["train", "--critters", "n0", "--max-steps", "1"]


def test_train_into_a_folder_that_holds_a_run_needs_overwrite(tmp_path, capsys, trainings):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("best.ckpt", "last.ckpt", "config.yaml", "split.json"):
        (run_dir / name).write_text("previous run")
    (run_dir / "logs").mkdir()
    (run_dir / "logs" / "metrics.csv").write_text("step,val_psnr\n1,20\n")
    (run_dir / "notes.txt").write_text("mine")
    code, _, err = run([*TRAIN, "--out", run_dir], capsys)
    line = one_line(err)
    assert code == 2 and str(run_dir) in line and "--overwrite" in line and "--resume" in line
    assert "best.ckpt" in line
    assert trainings == [] and (run_dir / "best.ckpt").read_text() == "previous run"

    code, out, err = run([*TRAIN, "--out", run_dir, "--overwrite"], capsys)
    assert code == 0, err
    assert [(d, k["overwrite"], k["resume"]) for d, k in trainings] == [(run_dir, True, False)]
    # no stale checkpoint or log line of the previous run survives; other files stay
    assert sorted(p.name for p in run_dir.iterdir()) == ["notes.txt"]


def test_train_into_a_folder_of_other_files_needs_overwrite(tmp_path, capsys, trainings):
    (tmp_path / "data.tif").write_bytes(b"an image")
    (tmp_path / "older-run").mkdir()
    code, _, err = run([*TRAIN, "--out", tmp_path], capsys)
    line = one_line(err)
    assert code == 2 and "data.tif, older-run" in line and "--overwrite" in line
    assert trainings == []


def test_a_run_that_stopped_before_training_can_be_started_again(tmp_path, capsys, trainings):
    # a bad --init-from or data error left only the config and split: no need for --overwrite
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("name: x\n")
    (run_dir / "split.json").write_text("{}")
    (run_dir / ".last.ckpt.tmp-4242").write_bytes(b"half")
    code, _, err = run([*TRAIN, "--out", run_dir], capsys)
    assert code == 0, err
    assert [(d, k["overwrite"]) for d, k in trainings] == [(run_dir, False)]


def test_train_overwrite_and_resume_contradict(tmp_path, capsys, trainings):
    code, _, err = run([*TRAIN, "--out", tmp_path, "--overwrite", "--resume"], capsys)
    assert code == 2 and "--resume" in one_line(err) and trainings == []


def test_train_into_an_empty_or_new_folder_needs_no_overwrite(tmp_path, capsys, trainings):
    (tmp_path / "empty").mkdir()
    for run_dir in (tmp_path / "empty", tmp_path / "new" / "run"):
        code, _, err = run([*TRAIN, "--out", run_dir], capsys)
        assert code == 0, err
    assert [d for d, _ in trainings] == [tmp_path / "empty", tmp_path / "new" / "run"]


def test_train_into_an_unwritable_place_is_refused_before_training(
        tmp_path, capsys, monkeypatch, trainings):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run([*TRAIN, "--out", blocker / "run"], capsys)
    assert code == 2 and f"{blocker} is a file" in one_line(err)
    ro = tmp_path / "ro"
    read_only(ro, monkeypatch)
    try:
        for run_dir in (ro / "run", ro):
            code, _, err = run([*TRAIN, "--out", run_dir], capsys)
            line = one_line(err)
            assert code == 2 and str(run_dir) in line and "no file can be created" in line
    finally:
        ro.chmod(0o755)
    assert trainings == []
