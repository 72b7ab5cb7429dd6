"""The built-in synthetic faces: deterministic by (seed, index), varied, any size, face-shaped."""

import hashlib
import os
import subprocess
import sys

import pytest
import torch

from missingglow.data import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tensor(img):
    w, h = img.size
    return torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(h, w, 3)


def test_deterministic_by_seed_and_index():
    a = synthetic.draw_face(0, 7, 32).tobytes()
    assert a == synthetic.draw_face(0, 7, 32).tobytes()
    assert a != synthetic.draw_face(0, 8, 32).tobytes()
    assert a != synthetic.draw_face(1, 7, 32).tobytes()


def test_same_face_in_another_process():
    code = (
        "import sys, hashlib; sys.path.insert(0, %r); from missingglow.data import synthetic; "
        "print(hashlib.sha256(synthetic.draw_face(3, 42, 24).tobytes()).hexdigest())" % ROOT
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONHASHSEED": "7"},
    )
    here = hashlib.sha256(synthetic.draw_face(3, 42, 24).tobytes()).hexdigest()
    assert out.returncode == 0 and out.stdout.strip() == here, out.stderr


@pytest.mark.parametrize("size", [8, 17, 64, 100, 300])
def test_any_size(size):
    img = synthetic.draw_face(0, 1, size)
    assert img.size == (size, size) and img.mode == "RGB"


def test_varied_and_face_shaped():
    faces = torch.stack([_tensor(synthetic.draw_face(0, i, 32)).float() for i in range(64)])
    # varied: faces differ from each other well beyond noise
    diffs = (faces[1:] - faces[:-1]).abs().mean(dim=(1, 2, 3))
    assert diffs.min() > 5
    # face-shaped: the middle of the image (the face) differs from the corners (the background)
    centre = faces[:, 12:20, 12:20].mean(dim=(1, 2))
    corner = faces[:, :4, :4].mean(dim=(1, 2))
    assert ((centre - corner).abs().sum(dim=1) > 20).float().mean() > 0.8
    # and the faces are not all alike: the centre colour (skin) varies
    assert centre.std(dim=0).mean() > 15


def test_contact_sheet_layout():
    sheet = synthetic.contact_sheet(0, 10, 16, columns=4)
    assert sheet.size == (64, 48)
    assert sheet.crop((16, 16, 32, 32)).tobytes() == synthetic.draw_face(0, 5, 16).tobytes()


def test_low_detail_is_the_half_size_face_enlarged():
    low = synthetic.draw(0, 3, 16, "low")
    assert low.size == (16, 16)
    # 2: bilinear
    assert low.tobytes() == synthetic.draw_face(0, 3, 8).resize((16, 16), 2).tobytes()
    assert synthetic.draw(0, 3, 16, "full").tobytes() == synthetic.draw_face(0, 3, 16).tobytes()

    # smoother: neighbouring pixels differ less than in the full faces
    def step(detail):
        images = (_tensor(synthetic.draw(0, i, 16, detail)).float() for i in range(16))
        return sum((x[1:] - x[:-1]).abs().mean() for x in images)

    assert step("low") < 0.8 * step("full")
