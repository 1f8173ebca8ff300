import pytest

from musplit.data.splits import Split, default_split, hagen_split, load_split, save_split
from musplit.errors import InputError


def test_pavia_split_matches_the_reference():
    s = default_split(61)
    assert s.val == [0, 1, 2, 6, 7, 8]
    assert s.test == [3, 4, 5, 9, 10, 11]
    assert s.train == list(range(12, 61))


def test_critters_split_matches_the_reference():
    s = default_split(1000)
    assert (len(s.train), len(s.val), len(s.test)) == (800, 100, 100)
    assert s.train == list(range(200, 1000))
    assert s.val[:6] == [0, 1, 2, 6, 7, 8] and s.val[-4:] == [192, 193, 194, 199]
    assert s.test[:3] == [3, 4, 5] and s.test[-4:] == [195, 196, 197, 198]


@pytest.mark.parametrize("n", [3, 5, 10, 11, 17, 29, 100, 123])
def test_default_split_partitions_the_frames(n):
    s = default_split(n)
    allidx = s.train + s.val + s.test
    assert sorted(allidx) == list(range(n))
    assert s.train == list(range(int(0.2 * n), n))
    s.validate(n)


def test_hagen_split():
    s = hagen_split(50)
    assert s.test == list(range(5)) and s.val == list(range(5, 10))
    assert s.train == list(range(10, 50))


def test_split_file_round_trip_and_validation(tmp_path):
    s = default_split(40)
    p = save_split(s, tmp_path / "split.json")
    assert load_split(p) == s
    with pytest.raises(InputError, match="does not exist"):
        Split(train=[0, 1, 50], val=[2], test=[3]).validate(10)
    with pytest.raises(InputError, match="share frame 2"):
        Split(train=[0, 1, 2], val=[2], test=[3]).validate(10)
    with pytest.raises(InputError, match="does not exist"):
        load_split(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_split(tmp_path / "bad.json")
