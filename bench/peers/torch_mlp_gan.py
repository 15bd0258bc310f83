#!/usr/bin/env python3
"""PyTorch peer of `gan-train bench`: the same GANs, measured the same way.

Models (identical shapes to gan-train's presets):
  classic  G: z100 -> 256 -> 512 -> 1024 -> 784, LeakyReLU(0.2) hidden, Tanh out
           D: 784 -> 512 -> 256 -> 1, LeakyReLU(0.2) hidden, one logit out
  mcu      G: z64 -> 128 -> 192 -> 784,           D: 784 -> 256 -> 128 -> 1
  dcgan    the DCGAN of torch_dcgan.py (G z100 -> dense 128x7x7 -> BN -> ReLU -> ConvT 64 ->
           BN -> ReLU -> ConvT 1 -> Tanh; D Conv 64 -> LReLU -> Conv 128 -> BN -> LReLU ->
           dense 1), PyTorch's default initialisation (speed does not depend on it)

Workloads:
  training   one full step per call: Gaussian noise, G forward, D forward on the real batch
             and on the detached fake batch, BCEWithLogits (real -> 1, fake -> 0), D backward
             and Adam step; then fresh noise, G forward, D forward, non-saturating
             BCEWithLogits (fake -> 1), backward into G and Adam step. zero_grad is part of
             every step. D's parameters are frozen during the G step, so (like gan-train) no
             D weight gradients are computed there.
  gen b1     G on one noise vector, model in eval mode, under torch.inference_mode().
  gen bN     the same with a batch of N (default 64).

Timing policy (the same as gan-train bench): run the workload for --warmup-secs, use that rate
to pick an iteration count lasting about --rep-secs, time --reps repetitions of it and report
the median rate with the slowest and fastest repetition.

float32 on the CPU; torch.set_num_threads(--threads, default: all cores).
"""

import argparse
import json
import math
import os
import statistics
import time
import warnings

# The wheel warns at import when numpy is missing; nothing here needs numpy.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

import torch  # noqa: E402
from torch import nn  # noqa: E402

PIXELS = 28 * 28

ARCHS = {
    "classic": {"latent": 100, "g_hidden": [256, 512, 1024], "d_hidden": [512, 256]},
    "mcu": {"latent": 64, "g_hidden": [128, 192], "d_hidden": [256, 128]},
    "dcgan": {"latent": 100},
}


def networks(name):
    """(G, D, shape of one real image) of an architecture."""
    if name == "dcgan":
        import sys

        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from torch_dcgan import Discriminator, Generator

        return Generator(), Discriminator(), (1, 28, 28)
    a = ARCHS[name]
    return generator(a["latent"], a["g_hidden"]), discriminator(a["d_hidden"]), (PIXELS,)


def generator(latent, hidden):
    layers, width = [], latent
    for h in hidden:
        layers += [nn.Linear(width, h), nn.LeakyReLU(0.2)]
        width = h
    layers += [nn.Linear(width, PIXELS), nn.Tanh()]
    return nn.Sequential(*layers)


def discriminator(hidden):
    layers, width = [], PIXELS
    for h in hidden:
        layers += [nn.Linear(width, h), nn.LeakyReLU(0.2)]
        width = h
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def measure(warmup_secs, rep_secs, reps, units, work):
    """Rates (units per second) of `reps` timed repetitions, and the calls per repetition."""
    start = time.perf_counter()
    calls = 0
    while calls == 0 or time.perf_counter() - start < warmup_secs:
        work()
        calls += 1
    per_call = (time.perf_counter() - start) / calls
    iters = max(1, math.ceil(rep_secs / per_call))
    rates = []
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(iters):
            work()
        rates.append(units * iters / (time.perf_counter() - t))
    return {"reps": rates, "iters": iters}


def summary(rate):
    r = rate["reps"]
    return {
        "median": statistics.median(r),
        "min": min(r),
        "max": max(r),
        "iters_per_rep": rate["iters"],
        "reps": r,
    }


def bench_arch(name, batch, policy):
    latent = ARCHS[name]["latent"]
    g, d, shape = networks(name)
    g_opt = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    d_opt = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    real = torch.rand(batch, *shape) * 2 - 1  # synthetic images in [-1, 1)
    # One logit per sample: (batch, 1) from the MLPs, (batch,) from the DCGAN.
    ones = torch.ones(d(real).shape)
    zeros = torch.zeros(d(real).shape)
    d_params = list(d.parameters())

    def train_step():
        # Discriminator.
        fake = g(torch.randn(batch, latent))
        d_opt.zero_grad(set_to_none=True)
        d_loss = bce(d(real), ones) + bce(d(fake.detach()), zeros)
        d_loss.backward()
        d_opt.step()
        # Generator (fresh noise), non-saturating loss.
        for p in d_params:
            p.requires_grad_(False)
        g_opt.zero_grad(set_to_none=True)
        g_loss = bce(d(g(torch.randn(batch, latent))), ones)
        g_loss.backward()
        g_opt.step()
        for p in d_params:
            p.requires_grad_(True)

    print(f"{name}: training step, batch {batch}", flush=True)
    g.train()
    d.train()
    train = measure(*policy, batch, train_step)

    g.eval()

    def gen(n):
        def work():
            with torch.inference_mode():
                g(torch.randn(n, latent))

        return work

    print(f"{name}: generator, batch 1", flush=True)
    gen_b1 = measure(*policy, 1, gen(1))
    print(f"{name}: generator, batch {batch}", flush=True)
    gen_bn = measure(*policy, batch, gen(batch))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {
        "arch": name,
        "g_params": count(g),
        "d_params": count(d),
        "train_images_per_sec": summary(train),
        "gen_b1_samples_per_sec": summary(gen_b1),
        "gen_bn_samples_per_sec": summary(gen_bn),
    }


def fmt(x):
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="classic,mcu", help="comma-separated: classic, mcu, dcgan")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--warmup-secs", type=float, default=1.0)
    ap.add_argument("--rep-secs", type=float, default=1.0)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="also write the results as JSON to this file")
    args = ap.parse_args()

    archs = [a.strip() for a in args.arch.split(",") if a.strip()]
    for a in archs:
        if a not in ARCHS:
            ap.error(f"unknown --arch {a!r}; choose from {', '.join(ARCHS)}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    policy = (args.warmup_secs, args.rep_secs, args.reps)

    results = [bench_arch(a, args.batch, policy) for a in archs]

    print(
        f"torch {torch.__version__} bench: batch {args.batch}, {torch.get_num_threads()} threads, "
        f"{args.reps} reps of ~{args.rep_secs} s after {args.warmup_secs} s warm-up"
    )
    print(f"{'model':<8} {'measurement':<34} {'median':>10} {'min':>10} {'max':>10} {'spread':>7}")
    for r in results:
        rows = [
            ("training (images/s, D+G step)", r["train_images_per_sec"]),
            ("generator batch 1 (samples/s)", r["gen_b1_samples_per_sec"]),
            (f"generator batch {args.batch} (samples/s)", r["gen_bn_samples_per_sec"]),
        ]
        for what, s in rows:
            spread = 100 * (s["max"] - s["min"]) / s["median"]
            print(
                f"{r['arch']:<8} {what:<34} {fmt(s['median']):>10} {fmt(s['min']):>10} "
                f"{fmt(s['max']):>10} {spread:>6.1f}%"
            )

    if args.json:
        doc = {
            "tool": f"torch {torch.__version__}",
            "batch": args.batch,
            "threads": torch.get_num_threads(),
            "warmup_secs": args.warmup_secs,
            "rep_secs": args.rep_secs,
            "reps": args.reps,
            "results": results,
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
