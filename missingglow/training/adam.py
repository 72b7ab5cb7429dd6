"""Adam that skips a step the device has judged bad, without the host reading anything.

The training step decides on the device whether its loss and gradient are finite and hands that
verdict to `GuardedAdam.skip_unless`; `step()` then updates nothing when the verdict is "bad", and
no value is read back to the host on the way, so the step can run ahead of the device and be
captured as a CUDA graph.

On CUDA the step is torch's fused Adam with `found_inf` (the flag GradScaler uses: its kernel
returns early and the step count is put back), `capturable` and the learning rate as a tensor.
Elsewhere no torch Adam runs without host reads (the CPU's fused kernel and the per-tensor
implementations read the step count and the learning rate as numbers), so `step()` runs
`masked_adam_`: the same update as one compiled op over all the tensors (flow/ops.py), which
reads the flag, the rate and the step counts itself, or where the extension is not built its
reference (flow/ops_reference.py), written in foreach ops on tensors only. The state, its dict
and the checkpoints are torch Adam's, so runs move freely between the two and older checkpoints
load.
"""

import torch

from ..flow import ops, ops_reference


class GuardedAdam(torch.optim.Adam):
    """torch.optim.Adam whose `step()` does nothing when the last `skip_unless(ok)` got False.

    The learning rate stays a float in `param_groups` (set it there as for any optimiser; the
    state dict holds floats); `stage_lr()`, called by the host before a step, copies it into the
    device tensor the step reads, so a captured step sees each new value. `fused` (default: on
    CUDA) picks torch's fused kernel over `masked_adam_`."""

    def __init__(self, params, lr, device, fused=None):
        device = torch.device(device)
        fused = device.type == "cuda" if fused is None else fused
        super().__init__(params, lr=lr, fused=fused or None, capturable=fused)
        # float32 for the fused kernel; the twin computes its rates in float64
        self.lr_tensor = torch.tensor(
            float(lr), device=device, dtype=torch.float32 if fused else torch.float64
        )
        self.found_inf = torch.zeros((), device=device)  # 1.0: skip this step (GradScaler's flag)
        self._staged = float(lr)
        # eager steps (torchrun, --no-graph, the warm-up) are meant: no "capturable" warning
        self._warned_capturable_if_run_uncaptured = True

    def skip_unless(self, ok):
        """Skip the next `step()` unless `ok` (a bool tensor on the device) is true."""
        self.found_inf.copy_(~ok)

    def stage_lr(self):
        """Copy param_groups' learning rate into the tensor a (captured) step reads; host side."""
        lr = self.param_groups[0]["lr"]
        if lr != self._staged:
            self.lr_tensor.fill_(lr)
            self._staged = lr

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("GuardedAdam.step takes no closure")
        if self.defaults["fused"]:
            self._fused_step()
            return
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
            self._init_group(group, params, grads, exp_avgs, exp_avg_sqs, [], steps)
            if params:
                beta1, beta2 = group["betas"]
                _masked_adam_for(params)(
                    params,
                    grads,
                    exp_avgs,
                    exp_avg_sqs,
                    steps,
                    self.lr_tensor,
                    beta1,
                    beta2,
                    group["eps"],
                    self.found_inf,
                )

    def _fused_step(self):
        """torch's fused step, reading the tensor learning rate and the skip flag."""
        floats = [group["lr"] for group in self.param_groups]
        for group in self.param_groups:
            group["lr"] = self.lr_tensor
        try:
            super().step()
        finally:
            for group, lr in zip(self.param_groups, floats, strict=True):
                group["lr"] = lr

    def load_state_dict(self, state_dict):
        """A torch Adam state dict (a checkpoint's, this one's or a plain Adam's), kept in this
        optimiser's mode: the saved flags would otherwise replace fused/capturable. Moments
        saved in another memory layout than their parameter's (a run of the reference model
        resumed with the fused one, whose 3×3 weights are channels-last) are copied into the
        parameter's layout, which the compiled step walks them in."""
        mine = {k: self.defaults[k] for k in ("fused", "capturable", "foreach")}
        groups = [dict(g, **mine) for g in state_dict["param_groups"]]
        super().load_state_dict(dict(state_dict, param_groups=groups))
        for group in self.param_groups:
            for param in group["params"]:
                state = self.state.get(param, {})
                for key in ("exp_avg", "exp_avg_sq"):
                    moment = state.get(key)
                    if moment is not None and moment.stride() != param.stride():
                        state[key] = torch.empty_like(param).copy_(moment)


def _masked_adam_for(params):
    """The compiled masked_adam_ for float32 or float64 CPU tensors where it is built, else its
    reference (which also takes other dtypes)."""
    first = params[0]
    if ops.AVAILABLE and first.device.type == "cpu" and first.dtype in _COMPILED_DTYPES:
        return ops.masked_adam_
    return ops_reference.masked_adam_


_COMPILED_DTYPES = (torch.float32, torch.float64)
