"""torch.compile of a model on the fused ops: the fake kernels let dynamo trace every op, so a
flow step (and here the whole tiny model) compiles as one graph, forward and backward."""

import pytest
import torch

from missingglow import Glow
from missingglow.flow import ops

pytestmark = pytest.mark.skipif(not ops.AVAILABLE, reason=str(ops.WHY_UNAVAILABLE))


def test_compiled_fused_glow_matches_eager_without_graph_breaks(gen):
    torch._dynamo.reset()
    model = Glow(blocks=2, flows=1, hidden=4, image_size=8, impl="fused")
    x = torch.rand(2, 3, 8, 8, generator=gen) - 0.5
    with torch.no_grad():
        model(x)  # data-dependent ActNorm init happens eagerly, once
    eager = model.log_prob(x)
    grads = torch.autograd.grad(eager.sum(), list(model.parameters()))
    # fullgraph=True turns any graph break into an error; the "eager" backend keeps it quick
    compiled = torch.compile(model.log_prob, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-4)
    compiled_grads = torch.autograd.grad(out.sum(), list(model.parameters()))
    for g, g_ref in zip(compiled_grads, grads, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-4)
