"""A noise model fitted on another intensity range than the training data (issue 18, bad
input): ``musplit train`` warns with the numbers, in the log the user sees, and still trains."""

from __future__ import annotations

import logging

import numpy as np

from tests.test_cli_denoisplit import noise_files, run, tiny_yaml


def test_noise_models_of_another_intensity_range_warn_with_numbers(tmp_path, capsys, caplog):
    folder = tmp_path / "channels"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in "ab":  # raw camera counts, 1000x the range the noise models were fitted on
        np.save(folder / f"{name}.npy", rng.random((8, 64, 64), dtype=np.float32) * 40_000)
    nm0, nm1 = noise_files(tmp_path)  # fitted on signals 0..50
    with caplog.at_level(logging.WARNING):
        code, _, err = run(["train", "--config", tiny_yaml(tmp_path / "c.yaml", folder),
                            "--loss", "denoisplit_usplit", "--noise-models", f"{nm0},{nm1}",
                            "--max-steps", "1", "--out", tmp_path / "run"], capsys)
    assert code == 0, err
    notes = [r.getMessage() for r in caplog.records if "noise model" in r.getMessage()]
    assert len(notes) == 2, notes  # one per channel
    for c, note in enumerate(notes):
        assert note.startswith(f"channel {c}: observations range [")
        assert "of the pixels outside" in note and "refit" in note
        lo, hi = (float(v) for v in note.split("[", 1)[1].split("]", 1)[0].split(","))
        assert 0 <= lo < 100 and 39_000 < hi <= 40_000  # the data's own numbers


def test_noise_models_of_the_data_s_range_do_not_warn(tmp_path, capsys, caplog):
    folder = tmp_path / "channels"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in "ab":
        np.save(folder / f"{name}.npy", rng.random((8, 64, 64), dtype=np.float32) * 45)
    nm0, nm1 = noise_files(tmp_path)
    with caplog.at_level(logging.WARNING):
        code, _, err = run(["train", "--config", tiny_yaml(tmp_path / "c.yaml", folder),
                            "--loss", "denoisplit_usplit", "--noise-models", f"{nm0},{nm1}",
                            "--max-steps", "1", "--out", tmp_path / "run"], capsys)
    assert code == 0, err
    assert not [r for r in caplog.records if "noise model" in r.getMessage()]
