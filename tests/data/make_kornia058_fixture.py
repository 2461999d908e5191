"""Writes kornia058_strong.npz: kornia 0.5.8's ColorJitter(0.2, 0.2, 0.2, 0.2) and GaussianBlur2d
outputs on seeded inputs, the oracle for sepico.train.augment (tests/test_augment.py).

Not run by the tests (kornia is not a dependency). To regenerate:
    pip install --no-deps --target /tmp/kornia058 kornia==0.5.8
    PYTHONPATH=/tmp/kornia058 .venv/bin/python tests/data/make_kornia058_fixture.py
"""
from pathlib import Path

import kornia
import numpy as np
import torch

assert kornia.__version__ == "0.5.8", kornia.__version__
out = {}
for seed in range(6):
    gen = torch.Generator().manual_seed(100 + seed)
    x = torch.rand(3, 3, 13, 17, generator=gen)
    if seed == 5:
        x[:, :, :4] = x[:, :1, :4]  # grey pixels: S = 0, hue undefined
    torch.manual_seed(seed)  # kornia draws from the global generator
    y = kornia.augmentation.ColorJitter(0.2, 0.2, 0.2, 0.2)(x)
    out[f"jitter_in_{seed}"], out[f"jitter_out_{seed}"] = x.numpy(), y.numpy()
for k, (h, w, sigma) in enumerate([(40, 70, 0.7), (64, 128, 1.15), (33, 21, 0.15)]):
    x = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(7 + k))
    ky = int(np.floor(np.ceil(0.1 * h) - 0.5 + np.ceil(0.1 * h) % 2))
    kx = int(np.floor(np.ceil(0.1 * w) - 0.5 + np.ceil(0.1 * w) % 2))
    y = kornia.filters.GaussianBlur2d(kernel_size=(ky, kx), sigma=(sigma, sigma))(x)
    out[f"blur_in_{k}"], out[f"blur_out_{k}"] = x.numpy(), y.numpy()
    out[f"blur_sigma_{k}"] = np.array(sigma)
np.savez_compressed(Path(__file__).with_name("kornia058_strong.npz"), **out)
print("wrote", len(out), "arrays")
