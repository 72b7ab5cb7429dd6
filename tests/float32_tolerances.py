"""Float32 tolerances derived from float32 rounding, for the fused ops' float32 tests
(test_ops.py, test_flow_step_op.py, test_fused.py).

Each float32 test computes three results from the same float32 inputs and parameters: the fused
op in float32, the reference in float32, and the reference in float64 on those float32 values
widened (exact to ~1e-16, so the errors below are the float32 arithmetic's alone).
"""

import torch
from torch.nn import functional as F

U = 2.0**-24  # float32's unit roundoff: a rounded result is within U·|value| of the exact one


def rms(t):
    return t.double().pow(2).mean().sqrt().item()


def assert_float32_close(fast, ref32, exact, size=None, c=4.0, what="", floor=None):
    """The fused float32 result is as accurate as the float32 reference, to a factor c.

    Derivation. To first order the error of a float32 evaluation is Σ_k δ_k·g_k·v_k: one term per
    rounding k of an intermediate value v_k, |δ_k| ≤ U, g_k the output's sensitivity to v_k. The
    fused op evaluates the same formula on the same inputs, so its g_k·v_k are the reference's; it
    rounds in another order (sums split into SIMD lanes, one loop instead of several passes, fused
    multiply-adds, a scale folded into a matrix), which changes which roundings occur but not their
    number per output by more than a factor of about 2. Over a whole tensor the root-mean-square
    error then differs from the reference's by about that factor; c = 4 leaves twice that.
    The floor U·rms(size): a reference result can come out exactly rounded by luck, or the two
    orders can differ by more than a factor 2 on a sum that cancels, while a correct kernel stays
    within a rounding of the size of what it adds. `size` is that size: the same computation on
    the absolute values of every input and parameter, in float64, which bounds every partial sum
    and product along the way (|a + b| ≤ |a| + |b|); default: the result itself. Or `floor`
    itself, for a computation with no such bound (see rounding_floor).

    What fails: a step done in lower precision (bfloat16's rounding is 2^16·U), an approximate exp
    or log, a constant rounded too early, a term left out: each an error of hundreds of U or more.
    Over 100 to 300 random seeds of test_ops.py's, test_flow_step_op.py's and test_fused.py's
    float32 tests, the largest error a correct kernel made was 0.75 of its bound.
    """
    if exact.numel() == 0:
        return
    err, err_ref = rms(fast.double() - exact), rms(ref32.double() - exact)
    if floor is None:
        floor = U * rms(exact if size is None else size)
    bound = c * max(err_ref, floor)
    assert err <= bound, (
        f"{what}: float32 rms error {err:.3g} = {err / U:.1f} U, more than "
        f"{c:g} × max(the float32 reference's {err_ref / U:.1f} U, the floor "
        f"{floor / U:.1f} U)"
    )


def rounding_floor(compute, inputs, exact, generator, draws=4):
    """rms change of each result of `compute(*inputs)` (float64) when every element of every input
    is moved by ±U relative, the signs random (rms over `draws` such moves): the error that
    rounding each input once to float32 causes, and so about the least error a float32 evaluation
    has (it rounds every intermediate value too). A floor for assert_float32_close where the
    result is a whole step's or model's, with no `size`."""
    total = [0.0] * len(exact)
    for _ in range(draws):
        signs = [(2 * torch.randint(0, 2, t.shape, generator=generator) - 1).to(t) for t in inputs]
        moved = compute(*[t * (1 + U * sign) for t, sign in zip(inputs, signs, strict=True)])
        total = [s + rms(a - b) ** 2 for s, a, b in zip(total, moved, exact, strict=True)]
    return [(s / draws) ** 0.5 for s in total]


def coupling_logdet_sd(log_s):
    """Standard deviation of float32 rounding in logdet_b = Σ_i log sigmoid(log_s_bi + 2).

    Derivation (rounding errors independent, uniform in ±U·|value rounded|, so each of standard
    deviation U·|value|/√3; first order):
    - per term, with v = log_s + 2: v itself is rounded (|∂ log sigmoid(v)/∂v| = 1 − s ≤ 1, so
      U·|v|); exp(−|v|) (1 ulp, 2U) times e/(1+e) ≤ 1; 1 + e and the product the kernels take of
      up to 64 of them before one log (U each, as a relative error of the product); the log (U).
      At most (|v| + 4)·U per term: variance Σ_i (|v_i| + 4)²·U²/3.
    - the sum: each addition rounds its running sum p_k. Summing in sequence (the portable build's
      order; SIMD lanes and channels-last runs add shorter sums, which round less), p_k is the sum
      of the first k terms; the kernels keep two running sums (the linear part min(v, 0) and the
      log part of each term, both of its sign, so each |p_k| ≤ P_k = Σ_{i≤k} |log s_i|). Variance
      2·Σ_k P_k²·U²/3. For n terms of similar size that is 2·n·(Σ|log s|)²·U²/9: the error grows
      as √n·U times the logdet's size.
    Six of these standard deviations bound the error of any correct float32 kernel (and of the
    float32 reference: its logsigmoid is as exact, its sum pairwise). On 12×16×16 (1536 terms of
    log_s + 2 = 4·N(0, 1) + 2) that is about 1e-2, against errors of 2e-4 (the SIMD builds) to
    1.4e-3 (the portable build's sequential sum); the largest seen over 100 seeds was 0.24 of it.
    A bias of 1e-5 per term (an exp or log good to 1e-5 only) is 1.5e-2 there, and fails."""
    v = (log_s.double() + 2).flatten(1)
    running = F.logsigmoid(v).abs().cumsum(1)
    return U * (((v.abs() + 4) ** 2).sum(1) / 3 + 2 * (running**2).sum(1) / 3).sqrt()


def assert_logdet_close(fast, exact, log_s, what="", slack=0.0):
    """|fast − exact| ≤ slack + 6 · coupling_logdet_sd(log_s) per sample (`slack`: the error of
    what comes before the sum, where a logdet has more than the coupling's terms)."""
    err = (fast.double() - exact).abs()
    bound = slack + 6 * coupling_logdet_sd(log_s).to(err.device)
    assert (err <= bound).all(), (
        f"{what}: logdet errors {(err / U).tolist()} U over {(bound / U).tolist()} U"
    )
