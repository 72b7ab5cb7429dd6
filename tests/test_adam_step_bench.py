"""bench/adam_step.py at tiny shapes: it times the four optimisers on the same gradients, and the
'reference' row really runs masked_adam_'s foreach reference (the compiled op switched off)."""

from types import SimpleNamespace

import pytest
import torch

from missingglow.flow import ops, ops_reference

from helpers import load_script

TINY = SimpleNamespace(blocks=2, flows=2, hidden=8, image_size=8)

pytestmark = pytest.mark.skipif(not ops.AVAILABLE, reason="missingglow._C is not built")


def test_adam_step_bench_times_four_optimisers_that_agree(monkeypatch, capsys):
    bench = load_script("bench/adam_step.py", "adam_step")
    monkeypatch.setattr(bench, "preset_config", lambda name: TINY)
    made = {}
    real = bench.optimisers
    monkeypatch.setattr(bench, "optimisers", lambda p: made.update(real(p)) or made)
    called = []
    real_reference = ops_reference.masked_adam_
    monkeypatch.setattr(
        ops_reference, "masked_adam_", lambda *a: called.append(1) or real_reference(*a)
    )
    medians = bench.main("--steps 2 --warmup 1".split())
    assert list(medians) == list(made) and all(t > 0 for t in medians.values())
    assert len(called) == 3  # the reference row's three steps, no other row's
    finals = [[q.detach() for q in o.param_groups[0]["params"]] for o in made.values()]
    for other in finals[1:]:
        for a, b in zip(finals[0], other, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert "GuardedAdam, compiled" in capsys.readouterr().out
