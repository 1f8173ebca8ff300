"""Prediction of many images block by block, in one process and on Dask (docs/distributed.md).

The reference is the single-image command (``musplit predict MODEL a.tif --out a.zarr``, the
streaming path) run image by image; a run over a folder in one process, on a
``LocalCluster(n_workers=2, threads_per_worker=1)`` on 127.0.0.1, with a worker killed in the
middle, and stopped then resumed on a cluster that ``--workers 2`` starts must all write the
same arrays, bit for bit (the HVAE samples its latents: two posterior samples, seeded per
block). Images are 96x96 in blocks of 48 px: 4 blocks an image, 12 in all.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import zarr

from musplit.cli import main
from musplit.data import generate_critters
from musplit.data.io import write_tiff
from tests.test_cli_denoisplit import one_line_error, run

CKPT = Path(__file__).parent / "fixtures" / "hvae_2026-12-07.ckpt"
NAMES = ("a", "b", "c")
SETTINGS = ["--samples", "2", "--std", "--block-size", "48"]



def arrays(folder: Path) -> dict[str, np.ndarray]:
    """Every store's array and display windows in ``folder``, by store name."""
    out = {}
    for p in sorted(folder.glob("*.zarr")):
        g = zarr.open_group(str(p), mode="r")
        out[p.name] = np.asarray(g["0"][...])
        out[p.name + ":windows"] = [c["window"] for c in g.attrs["ome"]["omero"]["channels"]]
    return out


def assert_same(got: dict, ref: dict) -> None:
    assert sorted(got) == sorted(ref)
    for k, v in ref.items():
        if k.endswith(":windows"):
            assert got[k] == v, k
        else:
            assert got[k].dtype == v.dtype and np.array_equal(got[k], v), k


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Three superimposed 96x96 inputs in one folder, and the single-image command's
    prediction of each (the reference)."""
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("dask")
    inputs = root / "inputs"
    inputs.mkdir()
    for i, name in enumerate(NAMES):
        mix = generate_critters(1, 96, 0, seed=10 + i).mean(-1, keepdims=True)
        write_tiff(inputs / f"{name}.tif", mix, "SYXC")
    ref = root / "ref"
    for name in NAMES:
        assert main(["predict", str(CKPT), str(inputs / f"{name}.tif"), "--out",
                     str(ref / f"{name}.zarr"), *SETTINGS]) == 0
    return inputs, arrays(ref)


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as c:
        yield c


def test_a_folder_in_one_process_equals_the_single_image_command(images, tmp_path, capsys):
    from musplit.data.io import open_image, write_zarr

    inputs, ref = images
    # an OME-Zarr input with a.tif's pixels under another name: the same prediction (a
    # block's noise depends on the seed and the block, not on the file)
    write_zarr(tmp_path / "d.ome.zarr", open_image(inputs / "a.tif").read(), "SYXC")
    code, out, err = run(["predict", CKPT, inputs, tmp_path / "d.ome.zarr", "--out",
                          tmp_path / "out", *SETTINGS], capsys)
    assert code == 0, err
    assert out.split() == [w for n in (*NAMES, "d") for w in
                           ("wrote", str(tmp_path / "out" / f"{n}.zarr"))]
    assert "image 4/4 done" in err
    got = arrays(tmp_path / "out")
    for k in ("d.zarr", "d_std.zarr"):
        assert np.array_equal(got.pop(k), ref["a" + k[1:]])
        assert got.pop(k + ":windows") == ref["a" + k[1:] + ":windows"]
    assert_same(got, ref)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"{n}{t}.zarr" for n in (*NAMES, "d") for t in ("", "_std"))  # no work folder left
    meta = zarr.open_group(str(tmp_path / "out" / "b_std.zarr"), mode="r").attrs["musplit"]
    assert meta["quantity"] == "std" and meta["blocks"] == 4 and meta["samples"] == 2


def test_a_local_cluster_of_two_workers_equals_one_process(images, cluster, tmp_path, capsys):
    inputs, ref = images
    code, _, err = run(["predict", CKPT, str(inputs / "*.tif"), "--out", tmp_path / "out",
                        "--scheduler", cluster.scheduler_address, *SETTINGS], capsys)
    assert code == 0, err
    assert f"Dask: {cluster.scheduler_address}, 2 worker(s)" in err
    assert err.count("MALLOC_TRIM_THRESHOLD_=65536") == 1  # Dask's default, noted once
    assert_same(arrays(tmp_path / "out"), ref)


def test_a_killed_worker_changes_nothing(images, cluster, tmp_path):
    from distributed import Client

    from musplit.predict.distributed import predict_many

    inputs, ref = images
    killed = []
    with Client(cluster, set_as_default=False) as client:
        pids = client.run(os.getpid)

        def kill_one(done, total):
            if done >= 2 and not killed:  # two blocks recorded: kill a busy worker
                busy = [w for w, keys in client.processing().items() if keys]
                assert busy, "no worker was predicting a block"
                os.kill(pids[busy[0]], signal.SIGKILL)
                killed.append((done, total, pids[busy[0]]))

        predict_many(CKPT, [inputs], tmp_path / "out", scheduler=cluster.scheduler_address,
                     samples=2, std=True, block=48, progress=kill_one)
        assert killed[0][2] not in client.run(os.getpid).values()  # that process is gone
    assert killed and killed[0][0] < killed[0][1]  # killed in the middle of the run
    assert_same(arrays(tmp_path / "out"), ref)


class _Stop(Exception):
    pass


def test_a_stopped_run_resumes_on_workers_and_only_predicts_what_is_left(images, tmp_path,
                                                                         capsys):
    from musplit.predict.distributed import WORK, predict_many

    inputs, ref = images
    out = tmp_path / "out"

    def stop_after_five(done, total):
        if done == 5:
            raise _Stop

    with pytest.raises(_Stop):
        predict_many(CKPT, [inputs], out, samples=2, std=True, block=48,
                     progress=stop_after_five)
    # a's four blocks were done: it is finished under its name; b and c are not, nowhere
    assert sorted(p.name for p in out.iterdir()) == [WORK, "a.zarr", "a_std.zarr"]
    code, _, err = run(["predict", CKPT, inputs, "--out", out, *SETTINGS], capsys)
    one_line_error(code, err, "interrupted prediction", "--resume")
    code, _, err = run(["predict", CKPT, inputs, "--out", out, "--resume", "--samples", "3",
                        "--std", "--block-size", "48"], capsys)
    one_line_error(code, err, "differs", "samples")
    code, _, err = run(["predict", CKPT, inputs, "--out", out, "--resume", "--workers", "2",
                        *SETTINGS], capsys)
    assert code == 0, err
    assert "5 of 12 block(s) already done, 7 to predict" in err
    assert "MALLOC_TRIM_THRESHOLD_" not in err  # --workers starts its workers without it
    assert_same(arrays(out), ref)
    resumed = {n: zarr.open_group(str(out / f"{n}.zarr"), mode="r").attrs["musplit"]
               ["blocks_resumed"] for n in ("b", "c")}
    assert resumed == {"b": 1, "c": 0}  # b's first block came from the stopped run
    assert not (out / WORK).exists()


def test_bad_calls_are_one_line_and_write_nothing(images, tmp_path, capsys):
    import dask

    inputs, _ = images
    out = tmp_path / "out"
    # an output folder that holds other results
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = run(["predict", CKPT, inputs / "a.tif", inputs / "b.tif", "--out", out,
                        *SETTINGS], capsys)
    one_line_error(code, err, "already holds notes.txt", "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    code, _, err = run(["predict", CKPT, inputs / "a.tif", inputs / "b.tif", "--out", out,
                        "--overwrite", *SETTINGS], capsys)
    assert code == 0, err
    assert (out / "notes.txt").read_text() == "mine" and (out / "b_std.zarr").is_dir()
    # a scheduler nobody listens at
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        code, _, err = run(["predict", CKPT, inputs, "--out", tmp_path / "none",
                            "--scheduler", "tcp://127.0.0.1:9", *SETTINGS], capsys)
    one_line_error(code, err, "cannot reach the Dask scheduler at tcp://127.0.0.1:9")
    assert not (tmp_path / "none").exists()
    # a folder with no images
    (tmp_path / "empty").mkdir()
    code, _, err = run(["predict", CKPT, tmp_path / "empty", "--out", tmp_path / "none"],
                       capsys)
    one_line_error(code, err, "no images")
    # images of different channel counts
    two = tmp_path / "two.tif"
    write_tiff(two, generate_critters(1, 96, 0, seed=1), "SYXC")
    code, _, err = run(["predict", CKPT, inputs / "a.tif", two, "--out", tmp_path / "none"],
                       capsys)
    one_line_error(code, err, "same number of channels", "a.tif has 1", "two.tif has 2")
    # a glob that matches nothing; --resume with nothing to resume
    code, _, err = run(["predict", CKPT, str(inputs / "*.npy"), "--out", tmp_path / "none"],
                       capsys)
    one_line_error(code, err, "no file matches")
    code, _, err = run(["predict", CKPT, inputs, "--out", tmp_path / "none", "--resume"],
                       capsys)
    one_line_error(code, err, "no interrupted prediction")
    assert not (tmp_path / "none").exists()


def test_plan_counts_blocks_and_writes_nothing(images, tmp_path, capsys):
    inputs, _ = images
    code, out, err = run(["predict", CKPT, inputs, "--out", tmp_path / "out", "--plan",
                          *SETTINGS], capsys)
    assert code == 0, err
    assert "3 image(s), 12 block(s) of up to 48x48 px" in out
    assert "108 tiles of 16 px" in out and "6 OME-Zarr store(s)" in out
    assert "expected with 2 worker(s)" in out
    assert not (tmp_path / "out").exists()


def test_block_seeds_depend_on_the_block_only():
    from musplit.predict.run import block_seed

    seeds = {block_seed(0, f, y, x) for f in range(2) for y in (0, 48) for x in (0, 48)}
    assert len(seeds) == 8 and all(0 <= s < 2**63 for s in seeds)
    assert block_seed(0, 1, 48, 0) == block_seed(0, 1, 48, 0) != block_seed(1, 1, 48, 0)


def test_one_image_and_one_process_never_import_dask(images, tmp_path):
    import subprocess
    import sys

    inputs, _ = images
    code = (
        "import sys\n"
        "from musplit.cli import main\n"
        f"assert main(['predict', {str(CKPT)!r}, {str(inputs / 'a.tif')!r}, '--out', "
        f"{str(tmp_path / 'a.zarr')!r}, '--block-size', '48']) == 0\n"
        f"assert main(['predict', {str(CKPT)!r}, {str(inputs)!r}, '--out', "
        f"{str(tmp_path / 'many')!r}, '--block-size', '48']) == 0\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed'))\n"
        "assert not loaded, loaded\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "a.zarr").is_dir() and (tmp_path / "many" / "c.zarr").is_dir()
