"""The guard's parts one by one, with hand-worked values: StepLog's bookkeeping of bad steps,
Distributed.all_finite's verdict as a tensor over two ranks, and GuardedAdam's modes, staged
learning rate and state dicts. They pin what the training tests' patterns of bad steps cannot
tell apart (docs/mutation.md, the guard's gaps)."""

import pytest
import torch
import torch.distributed as dist

from missingglow.training import loop
from missingglow.training.adam import GuardedAdam
from missingglow.training.step import StepLog

NAN, INF = float("nan"), float("inf")

# --- StepLog ------------------------------------------------------------------------------------


def add(log, steps):
    """(ok, loss, grad norm) per step; a bad step's loss and norm are non-finite, as they are."""
    for ok, loss, norm in steps:
        log.add(torch.tensor(loss), torch.tensor(norm), torch.tensor(ok))


def good(loss, norm):
    return True, loss, norm


BAD = (False, NAN, INF)


def test_step_log_places_bad_runs_by_hand():
    """Four reads. Each read restarts the sums but `run` (bad steps in a row) and `grad_norm`
    (of the last good step); a bad step's place counts good and bad steps since the read."""
    log = StepLog("cpu")
    # iterations 100..106: good, good, bad, bad, good, bad, good
    add(log, [good(1.0, 10.0), good(2.0, 20.0), BAD, BAD, good(4.0, 30.0), BAD, good(8.0, 40.0)])
    assert log.read(100) == {
        "loss_sum": 15.0,  # 1 + 2 + 4 + 8: the bad steps' NaNs left out
        "good": 4,
        "bad": 3,
        "run": 0,
        "worst": 2,  # iterations 102-103
        "first_bad": 102,
        "last_bad": 105,  # a place that good + bad steps give and good + run would not (4)
        "run_at_last": 1,  # the run that 105 ended, kept through the good step after it
        "grad_norm": 40.0,
    }
    # iterations 107..109: three bad steps, no good one
    add(log, [BAD, BAD, BAD])
    assert log.read(107) == {
        "loss_sum": 0.0,
        "good": 0,
        "bad": 3,
        "run": 3,
        "worst": 3,
        "first_bad": 107,
        "last_bad": 109,
        "run_at_last": 3,
        "grad_norm": 40.0,  # carried from the last good step, one read back
    }
    # iterations 110..111: the run goes on across the read, then ends
    add(log, [BAD, good(16.0, 50.0)])
    assert log.read(110) == {
        "loss_sum": 16.0,
        "good": 1,
        "bad": 1,
        "run": 0,
        "worst": 4,  # 107-110, the run carried over the read
        "first_bad": 110,
        "last_bad": 110,
        "run_at_last": 4,
        "grad_norm": 50.0,
    }
    # iterations 112..113: no bad step at all, so no places
    add(log, [good(32.0, 60.0), good(64.0, 70.0)])
    values = log.read(112)
    assert values["first_bad"] is None and values["last_bad"] is None
    assert (values["good"], values["bad"], values["worst"], values["run_at_last"]) == (2, 0, 0, 0)
    assert (values["loss_sum"], values["grad_norm"]) == (96.0, 70.0)


def test_the_worst_run_is_the_longest_not_the_first_place():
    """A short run late in the read: worst is its length, whatever the first bad step's place."""
    log = StepLog("cpu")
    add(log, [good(1.0, 1.0)] * 5 + [BAD, good(1.0, 2.0)])
    values = log.read(0)
    assert (values["worst"], values["first_bad"], values["run_at_last"]) == (1, 5, 1)


# --- Distributed.all_finite over two ranks, the step's tensor verdict ---------------------------


def two_ranks(monkeypatch, other):
    """Distributed as rank 0 of two on the CPU; the other rank's flag is `other`. The stand-in
    all_reduce takes what the real one takes: a tensor, reduced in place."""
    env = object.__new__(loop.Distributed)
    env.world, env.rank, env.device = 2, 0, torch.device("cpu")
    seen = []

    def all_reduce(t, op=dist.ReduceOp.SUM):
        assert op == dist.ReduceOp.MIN
        seen.append(t)
        t.copy_(torch.minimum(t, torch.full_like(t, float(other))))

    monkeypatch.setattr(loop.dist, "all_reduce", all_reduce)
    return env, seen


@pytest.mark.parametrize(
    "mine,other,expected",
    [(True, True, True), (False, True, False), (True, False, False), (False, False, False)],
)
def test_all_finite_answers_a_tensor_with_a_tensor(monkeypatch, mine, other, expected):
    env, seen = two_ranks(monkeypatch, other)
    flag = torch.tensor(mine)
    verdict = env.all_finite(flag)
    # still on the device, for the optimiser to read there: no host read in the step
    assert isinstance(verdict, torch.Tensor) and verdict.dtype == torch.bool
    assert verdict.shape == () and verdict.device == flag.device
    assert verdict.item() is expected
    assert flag.item() is mine and seen[0] is not flag  # the caller's flag is not overwritten


def test_all_finite_of_one_process_is_the_flag_itself():
    env = object.__new__(loop.Distributed)
    env.world, env.rank, env.device = 1, 0, torch.device("cpu")
    flag = torch.tensor(False)
    assert env.all_finite(flag) is flag and env.all_finite(True) is True


# --- GuardedAdam ----------------------------------------------------------------------------------


def params(n=3, value=1.0):
    return [torch.nn.Parameter(torch.full((n,), value, dtype=torch.float64))]


def test_guarded_adam_modes_on_the_cpu():
    """The masked twin by default on the CPU (torch's Adam neither fused nor capturable, the rate
    in float64); torch's fused kernel when asked (capturable, its rate in float32). The rate given
    is the groups' rate, not torch's default."""
    plain = GuardedAdam(params(), 0.25, "cpu")
    assert plain.defaults["fused"] is None and plain.defaults["capturable"] is False
    assert plain.param_groups[0]["lr"] == 0.25
    assert plain.lr_tensor.dtype == torch.float64 and plain.lr_tensor.item() == 0.25
    assert plain.found_inf.item() == 0.0
    fused = GuardedAdam(params(), 0.25, "cpu", fused=True)
    assert fused.defaults["fused"] is True and fused.defaults["capturable"] is True
    assert fused.param_groups[0]["lr"] == 0.25
    assert fused.lr_tensor.dtype == torch.float32 and fused.lr_tensor.item() == 0.25
    explicit = GuardedAdam(params(), 0.25, "cpu", fused=False)
    assert explicit.defaults["fused"] is None and explicit.defaults["capturable"] is False


@pytest.mark.parametrize("fused", [False, True])
def test_a_step_reads_the_staged_rate_and_leaves_the_groups_a_float(fused):
    """The first Adam step moves each weight by the rate (g / √g² = 1, ε aside). A rate set in
    param_groups reaches the step only through stage_lr(), as a captured step would see it, and
    the groups keep a float (the state dict's) after every step."""
    weights = params(2, 1.0)
    optimizer = GuardedAdam(weights, 0.5, "cpu", fused=fused)
    optimizer.param_groups[0]["lr"] = 0.25  # not staged
    weights[0].grad = torch.ones(2, dtype=torch.float64)
    optimizer.skip_unless(torch.tensor(True))
    optimizer.step()
    torch.testing.assert_close(weights[0].detach(), torch.full((2,), 0.5, dtype=torch.float64))
    assert type(optimizer.param_groups[0]["lr"]) is float
    assert optimizer.param_groups[0]["lr"] == 0.25
    optimizer.stage_lr()
    assert optimizer.lr_tensor.item() == 0.25
    optimizer.skip_unless(torch.tensor(False))  # a bad step moves nothing, in either mode
    optimizer.step()
    torch.testing.assert_close(weights[0].detach(), torch.full((2,), 0.5, dtype=torch.float64))
    assert optimizer.state[weights[0]]["step"].item() == 1


def test_the_fused_mode_moves_as_torchs_fused_adam_and_skips_a_bad_step():
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(5, dtype=torch.float64, generator=gen)
    ours, theirs = [torch.nn.Parameter(start.clone())], [torch.nn.Parameter(start.clone())]
    lr = 2**-7  # the same in float32, the fused mode's rate, and in float64
    guarded = GuardedAdam(ours, lr, "cpu", fused=True)
    reference = torch.optim.Adam(theirs, lr=lr, fused=True)
    for i in range(4):
        grad = torch.randn(5, dtype=torch.float64, generator=gen)
        bad = i == 1
        if bad:
            grad[0] = NAN
        ours[0].grad, theirs[0].grad = grad.clone(), grad.clone()
        guarded.skip_unless(torch.tensor(not bad))
        guarded.step()
        if not bad:
            reference.step()
    torch.testing.assert_close(ours[0], theirs[0], atol=1e-15, rtol=0)
    assert guarded.state[ours[0]]["step"].item() == 3


class Fills:
    """A stand-in for the rate's device tensor that records what is written into it."""

    def __init__(self):
        self.values = []

    def fill_(self, value):
        self.values.append(value)


def test_stage_lr_writes_the_device_rate_only_when_it_changed():
    """One device write per change of rate, none per step: the host stages before every step."""
    optimizer = GuardedAdam(params(), 0.5, "cpu")
    optimizer.lr_tensor = Fills()
    optimizer.stage_lr()
    assert optimizer.lr_tensor.values == []  # the rate it was made with is already there
    optimizer.param_groups[0]["lr"] = 0.25
    optimizer.stage_lr()
    optimizer.stage_lr()
    assert optimizer.lr_tensor.values == [0.25]


@pytest.mark.parametrize("saved_fused,loaded_fused", [(True, False), (False, True)])
def test_a_loaded_state_dict_keeps_this_optimisers_mode(saved_fused, loaded_fused):
    """A checkpoint written in the other mode (a GPU's fused one on the CPU, or back) brings its
    moments and rate but not its fused/capturable flags."""
    weights = params(3, 1.0)
    saved = GuardedAdam(weights, 0.5, "cpu", fused=saved_fused)
    weights[0].grad = torch.ones(3, dtype=torch.float64)
    saved.skip_unless(torch.tensor(True))
    saved.step()
    other = params(3, 1.0)
    loaded = GuardedAdam(other, 1e-3, "cpu", fused=loaded_fused)
    loaded.load_state_dict(saved.state_dict())
    group = loaded.param_groups[0]
    assert group["fused"] is (True if loaded_fused else None)
    assert group["capturable"] is loaded_fused
    assert group["lr"] == 0.5
    assert loaded.state[other[0]]["step"].item() == 1
    loaded.stage_lr()
    other[0].grad = torch.ones(3, dtype=torch.float64)
    loaded.skip_unless(torch.tensor(True))
    loaded.step()  # runs in its own mode
    assert loaded.state[other[0]]["step"].item() == 2
