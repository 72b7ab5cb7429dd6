"""Checkpoints written in the background, so that a large one does not stall training.

`save(payload)` copies the payload's tensors to host memory (pinned buffers on CUDA, reused from
save to save, copied without blocking and waited for in the writer thread) and hands the copy to a
thread that writes it through checkpoint.save_checkpoint, atomically as ever. One write is in
flight at a time: the next save, `wait()` and the end of the run wait for the previous one, and a
write that failed raises its WriteError there (or at `check()`), in the thread that trains, so the
run stops with the usual one line naming the last good checkpoint.
"""

import threading

import torch

from . import checkpoint as ckpt


class CheckpointWriter:
    """Background checkpoint writes for one run folder (see the module docstring)."""

    def __init__(self, run_dir):
        self.run_dir = run_dir
        self.thread, self.error, self.buffers, self.from_cuda = None, None, {}, False

    def save(self, payload):
        """Snapshot `payload` (its tensors as they are once the queued work has run) and write it
        in the background; returns once the snapshot is queued."""
        self.wait()
        self.from_cuda = False
        snapshot = self._copy(payload, ())
        copied = None
        if self.from_cuda:  # the copies are queued behind the steps: the thread waits for them
            copied = torch.cuda.Event()
            copied.record()
        self.thread = threading.Thread(
            target=self._write, args=(snapshot, copied), name="missingglow-checkpoint", daemon=True
        )
        self.thread.start()

    def _write(self, snapshot, copied):
        try:
            if copied is not None:
                copied.synchronize()
            ckpt.save_checkpoint(self.run_dir, snapshot)
        except BaseException as err:  # handed to the training thread
            self.error = err

    def wait(self):
        """Wait for the write in flight; raise its error if it failed."""
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        self.check()

    def check(self):
        """Raise the error of a write that failed, without waiting for one in flight."""
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def close(self):
        """Wait for the write in flight and keep quiet about it (the run is stopping anyway)."""
        if self.thread is not None:
            self.thread.join()
            self.thread = None

    def _copy(self, value, path):
        """`value` with every tensor copied into this writer's host buffer for its place."""
        if isinstance(value, torch.Tensor):
            return self._host_copy(value.detach(), path)
        if isinstance(value, dict):
            return {k: self._copy(v, path + (k,)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self._copy(v, path + (i,)) for i, v in enumerate(value))
        return value

    def _host_copy(self, tensor, path):
        buffer = self.buffers.get(path)
        if buffer is None or buffer.shape != tensor.shape or buffer.dtype != tensor.dtype:
            buffer = torch.empty_like(tensor, device="cpu", pin_memory=tensor.is_cuda)
            self.buffers[path] = buffer
        buffer.copy_(tensor, non_blocking=tensor.is_cuda)
        self.from_cuda |= tensor.is_cuda
        return buffer
