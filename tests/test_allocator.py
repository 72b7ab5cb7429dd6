"""Training keeps freed heap memory (missingglow/allocator.py) where glibc can be asked to."""
import ctypes.util
import sys

import pytest

from missingglow.allocator import keep_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux") or ctypes.util.find_library("c") is None,
                    reason="glibc's mallopt is Linux-only")
def test_keep_freed_memory_is_applied_on_glibc():
    assert keep_freed_memory() is True


def test_training_asks_for_it(monkeypatch):
    from missingglow import train

    calls = []
    monkeypatch.setattr(train, "keep_freed_memory", lambda: calls.append(1) or True)
    with pytest.raises(KeyError, match="preset"):  # the config has no preset to name the run by
        train.train({"not": "a config"})
    assert calls == [1]
