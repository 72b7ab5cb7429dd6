"""Classical inpainting a user would pick instead of a learned prior, for `evaluate` to score.

scikit-image's biharmonic inpainting and OpenCV's Telea and Navier–Stokes methods are optional
(the `baselines` extra): they need NumPy, which the rest of missingglow never imports, so each is
imported only here and only when asked for. `available()` says which ones can run and why the
others cannot; our own harmonic fill (pure PyTorch) is always there.
"""

import torch

CLASSICAL = {  # name → (package to import, what to install)
    "biharmonic (scikit-image)": ("skimage", "scikit-image"),
    "Telea (OpenCV)": ("cv2", "opencv-python-headless"),
    "Navier–Stokes (OpenCV)": ("cv2", "opencv-python-headless"),
}


def available():
    """(names that can run, {name: why not} for the others)."""
    import importlib

    ok, missing = [], {}
    for name, (module, package) in CLASSICAL.items():
        try:
            importlib.import_module(module)
            ok.append(name)
        except ImportError:
            missing[name] = f"pip install {package} (or missingglow[baselines])"
    return ok, missing


def inpaint(name, images, missing):
    """images (B, 3, S, S) in [0, 1], missing (B, 1, S, S) bool → (B, 3, S, S) in [0, 1]."""
    import numpy as np

    out = []
    for image, hole in zip(images, missing, strict=True):
        rgb = image.permute(1, 2, 0).contiguous().numpy().astype(np.float64)
        mask = hole[0].numpy()
        if name.startswith("biharmonic"):
            from skimage.restoration import inpaint_biharmonic

            filled = inpaint_biharmonic(rgb, mask, channel_axis=-1)
        else:
            import cv2

            flag = cv2.INPAINT_TELEA if name.startswith("Telea") else cv2.INPAINT_NS
            eight = np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)
            filled = cv2.inpaint(eight, mask.astype(np.uint8), 3, flag).astype(np.float64) / 255
        out.append(torch.from_numpy(np.ascontiguousarray(filled)).permute(2, 0, 1).float())
    return torch.stack(out).clamp(0, 1)
