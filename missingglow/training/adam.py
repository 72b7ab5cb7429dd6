"""Adam that skips a step the device has judged bad, without the host reading anything.

The training step decides on the device whether its loss and gradient are finite and hands that
verdict to `GuardedAdam.skip_unless`; `step()` then updates nothing when the verdict is "bad", and
no value is read back to the host on the way, so the step can run ahead of the device and be
captured as a CUDA graph.

On CUDA the step is torch's fused Adam with `found_inf` (the flag GradScaler uses: its kernel
returns early and the step count is put back), `capturable` and the learning rate as a tensor.
Elsewhere no torch Adam runs without host reads (the CPU's fused kernel and the per-tensor
implementations read the step count and the learning rate as numbers), so `step()` runs
`masked_adam_`: the same update, written in foreach ops on tensors only, with the bad step's
gradients zeroed and its coefficients turned into exact no-ops. The state, its dict and the
checkpoints are torch Adam's, so runs move freely between the two and older checkpoints load.
"""

import torch


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
                masked_adam_(
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
        optimiser's mode: the saved flags would otherwise replace fused/capturable."""
        mine = {k: self.defaults[k] for k in ("fused", "capturable", "foreach")}
        groups = [dict(g, **mine) for g in state_dict["param_groups"]]
        super().load_state_dict(dict(state_dict, param_groups=groups))


def masked_adam_(params, grads, exp_avgs, exp_avg_sqs, steps, lr, beta1, beta2, eps, found_inf):
    """Adam's update (the fused kernel's formula) in place, or nothing where found_inf is 1, with
    no value read on the host. `lr`, `found_inf` and each of `steps` are 0-dim tensors."""
    n = len(params)
    ok = 1 - found_inf.to(params[0].dtype)
    # a bad step's gradients may be non-finite: zero them in one pass, so that the masked
    # arithmetic below leaves every tensor exactly as it was
    flat = torch.nan_to_num(torch.cat([g.reshape(-1) for g in grads]), 0.0, 0.0, 0.0).mul_(ok)
    grads = [
        part.view(g.shape)
        for part, g in zip(flat.split([g.numel() for g in grads]), grads, strict=True)
    ]

    # the step count (put back on a bad step) and the bias corrections in float64, as the fused
    # kernel computes them; at least 1 step in them, so a bad first step divides by no zero
    torch._foreach_add_(steps, [ok] * n)
    t = torch.stack(steps).double().clamp_min(1)
    rate = ((-lr.double() * ok) / (1 - beta1**t)).to(ok.dtype)  # −lr/(1 − β1^t), 0 when bad
    correction2 = torch.sqrt(1 - beta2**t).to(ok.dtype)  # √(1 − β2^t)

    # the moments: m ← β1·m + (1 − β1)·g and v ← β2·v + (1 − β2)·g², or unchanged when bad
    torch._foreach_mul_(exp_avgs, [1 - (1 - beta1) * ok] * n)
    torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, [1 - (1 - beta2) * ok] * n)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)

    # θ ← θ + rate · m / (√v / √(1 − β2^t) + ε)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, list(correction2.unbind()))
    torch._foreach_add_(denom, eps)
    update = torch._foreach_div(exp_avgs, denom)
    torch._foreach_mul_(update, list(rate.unbind()))
    torch._foreach_add_(params, update)
