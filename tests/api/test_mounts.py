"""A mount the container's user cannot use is named, instead of silently falling back to the defaults."""

from __future__ import annotations

from kubetune.api.sources import unusable_mounts


def test_mounted_but_unusable_paths_are_named():
    seen: dict[tuple[str, bool], bool | None] = {
        ("/m/model", False): False,  # there, not readable
        ("/m/data", False): True,
        ("/m/output", True): False,  # there, not writable
    }
    problems = unusable_mounts("/m/", lambda path, write: seen[(path, write)], uid=10001)
    assert problems == [
        "/m/model: mounted but not readable by UID 10001 (check its owner and mode)",
        "/m/output: mounted but not writable by UID 10001 (check its owner and mode)",
    ]


def test_nothing_mounted_is_not_a_problem():
    assert unusable_mounts("/", lambda path, write: None, uid=10001) == []
