#!/usr/bin/env python3
"""PyTorch peer of the `dcgan` preset's quality: train the same DCGAN on the same digits, write
samples for `gan-train score`.

Architecture (identical shapes and parameter count to gan-train's `dcgan` preset):
  G  z100 -> Linear 128*7*7 -> view 128x7x7 -> BatchNorm -> ReLU
          -> ConvTranspose 64 (4x4, stride 2, pad 1) -> BatchNorm -> ReLU
          -> ConvTranspose 1 (4x4, stride 2, pad 1) -> Tanh
  D  Conv 64 (4x4, s2, p1) -> LeakyReLU(0.2) -> Conv 128 (4x4, s2, p1) -> BatchNorm
          -> LeakyReLU(0.2) -> flatten -> Linear 1 (a logit)

Training as in pytorch/examples' DCGAN: weights N(0, 0.02) for convolutions, N(1, 0.02) for
BatchNorm scales, zero biases; Adam lr 2e-4, betas (0.5, 0.999) for both networks; batch 64;
BCE on logits with real label 1 and fake label 0; per batch one D step on a real and a
detached fake batch, then one G step with the non-saturating loss on the same fake batch.
Images scaled to [-1, 1]. 20 epochs over the 10,000 bundled digits by default.

After training, G in eval mode draws --samples images (Gaussian noise from torch's generator
seeded with --seed) and writes them as an IDX file of grey bytes, each pixel
round((x + 1) * 127.5) clamped to 0..255 as gan-train does; score them with
  gan-train score --idx <file> --grid <png>
(--grid also draws the first 100 of them as a picture).
"""

import argparse
import gzip
import json
import math
import os
import struct
import time
import warnings

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

import torch  # noqa: E402
from torch import nn  # noqa: E402

LATENT = 100


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = data[0] * 256 + data[1], data[2], data[3]
    if zero != 0 or dtype != 0x08:
        raise SystemExit(f"{path}: not an unsigned-byte IDX file")
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    body = data[4 + 4 * ndim :]
    count = math.prod(dims)
    if len(body) < count:
        raise SystemExit(f"{path}: truncated")
    return dims, body[:count]


def write_idx(path, images, n, h, w):
    with open(path, "wb") as f:
        f.write(bytes([0, 0, 0x08, 3]))
        f.write(struct.pack(">III", n, h, w))
        f.write(images)


class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(LATENT, 128 * 7 * 7)
        self.body = nn.Sequential(
            nn.BatchNorm2d(128),
            nn.ReLU(True),
            nn.ConvTranspose2d(128, 64, 4, 2, 1),
            nn.BatchNorm2d(64),
            nn.ReLU(True),
            nn.ConvTranspose2d(64, 1, 4, 2, 1),
            nn.Tanh(),
        )

    def forward(self, z):
        return self.body(self.fc(z).view(-1, 128, 7, 7))


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 64, 4, 2, 1),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(64, 128, 4, 2, 1),
            nn.BatchNorm2d(128),
            nn.LeakyReLU(0.2, True),
            nn.Flatten(),
            nn.Linear(128 * 7 * 7, 1),
        )

    def forward(self, x):
        return self.body(x).view(-1)


def weights_init(m):
    name = m.__class__.__name__
    if "Conv" in name:
        nn.init.normal_(m.weight, 0.0, 0.02)
        nn.init.zeros_(m.bias)
    elif "BatchNorm" in name:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/mnist-10k", help="directory with images-idx3-ubyte(.gz)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--samples", type=int, default=10_000)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--out", required=True, help="IDX file for the samples")
    p.add_argument("--json", help="also write timing and settings as JSON")
    a = p.parse_args()

    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    names = [n for n in os.listdir(a.data) if n.startswith("images-idx3-ubyte")]
    if not names:
        raise SystemExit(f"no images-idx3-ubyte file in {a.data}")
    (n, h, w), body = read_idx(os.path.join(a.data, names[0]))
    real = torch.frombuffer(bytearray(body), dtype=torch.uint8).float().view(n, 1, h, w)
    real = real / 127.5 - 1.0

    g, d = Generator(), Discriminator()
    g.apply(weights_init)
    d.apply(weights_init)
    opt_g = torch.optim.Adam(g.parameters(), lr=a.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=a.lr, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()

    started = time.time()
    steps = 0
    for epoch in range(a.epochs):
        perm = torch.randperm(n)
        d_sum = g_sum = 0.0
        batches = n // a.batch
        for b in range(batches):
            x = real[perm[b * a.batch : (b + 1) * a.batch]]
            z = torch.randn(a.batch, LATENT)
            fake = g(z)
            opt_d.zero_grad()
            ones, zeros = torch.ones(a.batch), torch.zeros(a.batch)
            loss_d = bce(d(x), ones) + bce(d(fake.detach()), zeros)
            loss_d.backward()
            opt_d.step()
            opt_g.zero_grad()
            loss_g = bce(d(fake), ones)
            loss_g.backward()
            opt_g.step()
            d_sum += loss_d.item()
            g_sum += loss_g.item()
            steps += 1
        print(f"epoch {epoch + 1}/{a.epochs}  D {d_sum / batches:.3f}  G {g_sum / batches:.3f}  ({time.time() - started:.0f} s)", flush=True)
    train_secs = time.time() - started

    g.eval()
    out = bytearray()
    gen = torch.Generator().manual_seed(a.seed + 1)
    with torch.inference_mode():
        for start in range(0, a.samples, 500):
            k = min(500, a.samples - start)
            y = g(torch.randn(k, LATENT, generator=gen))
            px = torch.clamp(torch.floor((y + 1.0) * 127.5 + 0.5), 0, 255).to(torch.uint8)
            out += bytes(px.flatten().tolist())
    write_idx(a.out, bytes(out), a.samples, h, w)
    print(f"wrote {a.samples} samples to {a.out} ({train_secs:.0f} s of training, {steps} steps)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(
                {
                    "epochs": a.epochs,
                    "batch": a.batch,
                    "steps": steps,
                    "train_seconds": train_secs,
                    "threads": a.threads,
                    "torch": torch.__version__,
                    "g_params": sum(t.numel() for t in g.parameters()),
                    "samples": a.samples,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
