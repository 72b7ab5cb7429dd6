"""Training keeps freed heap memory (training/allocator.py) where glibc can be asked to."""

import ctypes.util
import sys

import pytest

from missingglow.training import allocator
from missingglow.training.allocator import keep_freed_memory

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>


class FakeLibc:
    """A libc whose mallopt records its calls and answers `results` in turn (1: applied)."""

    def __init__(self, results=(1, 1)):
        self.calls, self.results = [], list(results)

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return self.results.pop(0)


def fake_cdll(monkeypatch, libc):
    names = []

    def cdll(name):
        names.append(name)
        if isinstance(libc, Exception):
            raise libc
        return libc

    monkeypatch.setattr(allocator.ctypes, "CDLL", cdll)
    return names


def test_it_never_trims_the_heap_and_serves_blocks_under_32_mib_from_it(monkeypatch):
    libc = FakeLibc()
    names = fake_cdll(monkeypatch, libc)
    assert keep_freed_memory() is True
    assert names == ["libc.so.6"]
    assert libc.calls == [(M_TRIM_THRESHOLD, 2**31 - 1), (M_MMAP_THRESHOLD, 32 * 2**20)]
    libc = FakeLibc()
    fake_cdll(monkeypatch, libc)
    assert keep_freed_memory(mmap_below=4096) is True
    assert libc.calls[1] == (M_MMAP_THRESHOLD, 4096)


@pytest.mark.parametrize("results", [(0, 1), (1, 0)])
def test_a_setting_glibc_refuses_is_reported(monkeypatch, results):
    libc = FakeLibc(results)
    fake_cdll(monkeypatch, libc)
    assert keep_freed_memory() is False


@pytest.mark.parametrize(
    "libc",
    [OSError("libc.so.6: cannot open shared object file"), object()],
    ids=["no libc.so.6", "a libc without mallopt"],
)
def test_without_glibc_it_does_nothing(monkeypatch, libc):
    fake_cdll(monkeypatch, libc)
    assert keep_freed_memory() is False


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or ctypes.util.find_library("c") is None,
    reason="glibc's mallopt is Linux-only",
)
def test_keep_freed_memory_is_applied_on_glibc():
    assert keep_freed_memory() is True


def test_training_asks_for_it_first(monkeypatch):
    from missingglow.training import loop as train
    from missingglow.training.config import preset_config

    calls = []

    class Stop(Exception):
        pass

    def distributed():
        calls.append("distributed")
        raise Stop

    monkeypatch.setattr(train, "keep_freed_memory", lambda: calls.append("keep") or True)
    monkeypatch.setattr(train, "Distributed", distributed)
    with pytest.raises(Stop):
        train.train(preset_config("small"))
    assert calls == ["keep", "distributed"]  # before anything else of the run starts
