"""The training step, run without waiting for the device; its sums, read every so often.

A step reads its batch from a static input buffer, decides on the device whether its loss and
gradient are finite, lets the optimiser skip a bad update on the device (adam.py) and adds its loss
and verdict to sums that stay on the device (`StepLog`). Nothing in it reads a value back, so the
host queues step after step, and on one GPU the whole step is captured once as a CUDA graph and
replayed (`Stepper`). The loop reads the sums every `log_every` steps and before every evaluation,
sample and checkpoint: that lagged read is where the bad-step count, the guard's rollback and the
progress bar learn what happened.

`synced_step` is the step as the loop ran it before: it reads the loss and the guard's verdict on
the host every step. It is the reference the tests and bench/gpu_step.py compare against.
"""

import contextlib

import torch

# StepLog's sums, one float64 each; `run` (bad steps in a row) and `grad_norm` (of the last good
# step) carry over a read, the others restart
FIELDS = (
    "loss_sum",
    "good",
    "bad",
    "run",
    "worst",
    "first_bad",
    "last_bad",
    "run_at_last",
    "grad_norm",
)
CARRIED = ("run", "grad_norm")


class StepLog:
    """What the steps since the last read did, summed on the device; `read()` brings it over."""

    def __init__(self, device):
        self.sums = torch.zeros(len(FIELDS), dtype=torch.float64, device=device)
        self.keep = torch.tensor(
            [float(f in CARRIED) for f in FIELDS], dtype=torch.float64, device=device
        )

    def add(self, loss, grad_norm, ok):
        """One step's loss, gradient norm and verdict (bool tensor); device ops only.
        `first_bad`/`last_bad` count steps since the read from 1, 0 meaning none."""
        s, ok, bad = self.sums, ok.reshape(()), ~ok.reshape(())
        okd = ok.double()
        index = s[1] + s[2] + 1  # this step, counted from 1
        run = (s[3] + 1) * bad.double()
        new = torch.stack(
            [
                s[0] + torch.where(ok, loss.detach().double(), 0.0),
                s[1] + okd,
                s[2] + (1 - okd),
                run,
                torch.maximum(s[4], run),
                torch.where(bad & (s[5] == 0), index, s[5]),
                torch.where(bad, index, s[6]),
                torch.where(bad, run, s[7]),
                torch.where(ok, grad_norm.detach().double(), s[8]),
            ]
        )
        s.copy_(new)

    def read(self, first_iteration):
        """{field: value} of the steps since the last read, which began at `first_iteration`
        (bad steps' places as iterations), and restart the sums: the one host read."""
        values = dict(zip(FIELDS, self.sums.tolist(), strict=True))
        self.sums.mul_(self.keep)
        for key in ("first_bad", "last_bad"):
            values[key] = first_iteration + int(values[key]) - 1 if values[key] else None
        for key in ("good", "bad", "run", "worst", "run_at_last"):
            values[key] = int(values[key])
        return values

    def clear(self):
        """Forget everything, the bad steps in a row too (after a rollback)."""
        self.sums.zero_()


class TrainStep:
    """One step on the static input `x`: forward, backward, clipping, the guard, the update and the
    log's sums, with no value read back. The same call runs eagerly or inside a CUDA graph
    capture; the host changes only `x` and the optimiser's staged learning rate between calls.

    `loss_of(x)` is the mean loss of a batch; `env.all_finite` ANDs the verdict over the ranks."""

    def __init__(self, loss_of, params, optimizer, input_shape, device, clip, env):
        self.loss_of, self.params, self.optimizer = loss_of, params, optimizer
        self.clip, self.env = clip, env
        self.x = torch.zeros(input_shape, device=device)
        self.log = StepLog(device)

    def __call__(self):
        # forward and backward on the static input
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_of(self.x)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip)

        # the guard, decided on the device: a non-finite loss or gradient on any rank skips the
        # update on every rank
        ok = self.env.all_finite(torch.isfinite(loss) & torch.isfinite(grad_norm))
        self.optimizer.skip_unless(ok)
        self.optimizer.step()
        self.log.add(loss, grad_norm, ok)


def capture_cuda_graph(step):
    """Capture one call of `step` as a CUDA graph; returns its replay. Capturing runs nothing.
    Thread-local capture: the checkpoint writer's thread may wait for its copy meanwhile."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        step()
    return graph.replay


class Stepper:
    """Calls a TrainStep eagerly, or as a CUDA graph when `graph` is on: `warmup` eager steps on a
    side stream first (PyTorch's whole-network capture recipe: ActNorm's flag and Adam's state are
    made there, not in the capture), then one capture, then replays. `reset()` (after a rollback
    has given the optimiser new state tensors) starts over with eager steps and a new capture. A
    capture that fails says so in one line and leaves the steps eager.

    `capture` makes the replay from the step (default: `capture_cuda_graph`, looked up when it
    is needed); tests pass a stand-in to run all of this on the CPU."""

    def __init__(self, step, graph, say, warmup=3, capture=None):
        self.step, self.graph, self.say, self.warmup = step, graph, say, warmup
        self.capture = capture
        self.replay, self.eager, self.captures = None, 0, 0
        self.side = torch.cuda.Stream() if graph and step.x.is_cuda else None

    def __call__(self):
        self.step.optimizer.stage_lr()
        if self.graph and self.replay is None and self.eager >= self.warmup:
            try:
                self.replay = (self.capture or capture_cuda_graph)(self.step)
                self.captures += 1
            except Exception as err:  # any failure: the eager step is always there
                self.graph = False
                reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
                self.say(
                    f"the training step cannot run as a CUDA graph "
                    f"({type(err).__name__}: {reason[:200]}); running it eagerly"
                )
        if self.replay is not None:
            self.replay()
            return
        with self._side_stream():
            self.step()
        self.eager += 1

    def reset(self):
        self.replay, self.eager = None, 0

    @contextlib.contextmanager
    def _side_stream(self):
        if self.side is None or not self.graph:
            yield
            return
        self.side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side):
            yield
        torch.cuda.current_stream().wait_stream(self.side)


class Feed:
    """Puts this rank's slice of a global batch into the step's static input. On CUDA through two
    pinned host buffers in turn, copied without blocking: the host fills one while the copy from
    the other may still be queued, and waits only for the copy it is about to overwrite."""

    def __init__(self, batches, target):
        self.batches, self.target = batches, target
        self.cuda = target.is_cuda
        if self.cuda:
            self.host = [
                torch.empty(target.shape, dtype=target.dtype, pin_memory=True) for _ in range(2)
            ]
            self.copied = [None, None]
            self.turn = 0

    def __call__(self, iteration):
        batch = self.batches.batch(iteration)
        if not self.cuda:
            self.target.copy_(batch)
            return
        i, self.turn = self.turn, 1 - self.turn
        if self.copied[i] is not None:
            self.copied[i].synchronize()
        self.host[i].copy_(batch)
        self.target.copy_(self.host[i], non_blocking=True)
        self.copied[i] = torch.cuda.Event()
        self.copied[i].record()


def synced_step(loss_of, params, optimizer, x, clip, env):
    """The step as the loop ran it before it stopped waiting for the device: the verdict and the
    loss are read on the host every step. Returns (loss, grad_norm) as floats, or None when the
    step was skipped."""
    loss = loss_of(x)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
    if not env.all_finite(bool(torch.isfinite(loss) & torch.isfinite(grad_norm))):
        return None
    optimizer.step()
    return loss.item(), float(grad_norm)
