import gc
import tracemalloc

import pytest

from mlserver_mme.naming import NotATargetPath, target_of, v2_name, validate_target


@pytest.mark.parametrize(
    "target, name",
    [
        ("Houston_TX.tar.gz", "Houston_TX"),
        ("northeast/Boston_MA.tar.gz", "northeast~2FBoston_MA"),
        ("model.json", "model.json~"),
        ("a b/ü~.tgz", "a~20b~2F~C3~BC~7E.tgz~"),
        ("x.tar.gz.tar.gz", "x.tar.gz"),
        ("x.tar.gz", "x"),
        ("x", "x~"),
    ],
)
def test_names_round_trip(target, name):
    assert v2_name(target) == name
    assert target_of(name) == target


def test_distinct_paths_get_distinct_names():
    targets = ["a.tar.gz", "a", "a.tgz", "a/b.tar.gz", "a~2Fb.tar.gz", "a~.tar.gz", "A.tar.gz", "a.tar.gz.tar.gz"]
    names = [v2_name(t) for t in targets]
    assert len(set(names)) == len(targets)


@pytest.mark.parametrize("name", ["a~b", "~2f", "~", "a~2Fb~~", "~C3", "x~7", "~2F..~2Fetc", "a~2F~2Fb"])
def test_names_no_path_maps_to_are_refused(name):
    with pytest.raises(NotATargetPath):
        target_of(name)


@pytest.mark.parametrize(
    "target",
    ["", " a.tar.gz", "/abs.tar.gz", "a\\b.tar.gz", "a//b.tar.gz", "a/", "../a.tar.gz", "a/../../b", "./a", "a\x00b", "a\nb", "x" * 1025],
)
def test_invalid_targets(target):
    with pytest.raises(NotATargetPath):
        validate_target(target)


def test_longest_target_is_valid():
    assert validate_target("x" * 1024) == "x" * 1024


def test_tar_gz_alone_has_a_name():
    # Dropping the suffix would leave an empty name (no V2 URL can hold it).
    assert v2_name(".tar.gz") == ".tar.gz~"
    assert target_of(".tar.gz~") == ".tar.gz"
    assert v2_name("a/.tar.gz") == "a~2F"
    with pytest.raises(NotATargetPath):
        target_of("")


def test_names_of_many_long_targets_do_not_stay_in_memory():
    # Every request computes a name, and distinct (hostile) targets are unbounded: nothing may grow with them.
    def targets():
        for i in range(70_000):
            yield f"{i:07d}/ü-" + "x" * 990

    tracemalloc.start()
    try:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for target in targets():
            assert target_of(v2_name(target)) == target
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 50 * 1024 * 1024
