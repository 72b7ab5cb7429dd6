"""bench/gpu_step.py runs on the CPU (what needs CUDA skipped with a note), at tiny shapes in
seconds: the JSON it writes has every variant (the opt-in C++ driver beside the default), and the
sync-like ops it counts tell the old step (host reads every step) from the loop's (none)."""

import json

from helpers import load_script


def load_bench():
    return load_script("bench/gpu_step.py", "gpu_step")


def test_gpu_step_runs_on_the_cpu_and_writes_json(tmp_path):
    out = tmp_path / "step.json"
    load_bench().main(
        [
            "--device",
            "cpu",
            "--presets",
            "tiny",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--repeats",
            "1",
            "--profile-steps",
            "2",
            "--out",
            str(out),
        ]
    )
    tiny = json.loads(out.read_text())["presets"]["tiny"]
    variants = tiny["variants"]
    assert set(variants) == {"synced", "sync_free", "graph", "driver", "bf16"}
    assert "CUDA" in variants["graph"]["skipped"] and "skipped" in tiny["graph_matches_eager"]
    assert variants["synced"]["sync_ops_per_step"] >= 2  # the verdict and the loss, at least
    assert variants["sync_free"]["sync_ops_per_step"] == 0
    assert variants["sync_free"]["wall_ms_per_step"] > 0
    # the opt-in C++ driver is timed beside the default, and each ran the path it names
    assert variants["sync_free"]["driver_steps"] == 0
    assert variants["driver"]["driver_steps"] == 4  # tiny: 2 blocks x 2 flows, all affine fp32
    assert variants["driver"]["sync_ops_per_step"] == 0
    periodic = tiny["periodic"]
    assert periodic["checkpoint_mb"] > 0 and periodic["share_of_a_step"] > 0
