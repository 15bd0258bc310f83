#!/bin/sh
# The dcgan preset against the PyTorch DCGAN peer (torch_dcgan.py): the same architecture, the
# same 10,000 bundled digits, 20 epochs each, both scored by `gan-train score` on 10,000
# samples. Results and sample grids go to OUT_DIR.
#
#   bench/peers/compare_dcgan.sh PYTHON [OUT_DIR] [SEEDS]
#     PYTHON   a Python with torch installed (see bench/peers/README.md)
#     OUT_DIR  default runs/compare-dcgan
#     SEEDS    default "1 2 3"
set -eu
python=$1
out=${2:-runs/compare-dcgan}
seeds=${3:-1 2 3}
cargo build --release -p gan-train
bin=target/release/gan-train
mkdir -p "$out"
for s in $seeds; do
    if [ ! -f "$out/ours-$s/generator.ganw" ]; then
        rm -rf "$out/ours-$s"
        "$bin" train --arch dcgan --epochs 20 --seed "$s" --run "$out/ours-$s" --quiet
    fi
    "$bin" score --run "$out/ours-$s" --json "$out/ours-$s.json" --grid "$out/ours-$s.png"
    if [ ! -f "$out/torch-$s.idx" ]; then
        "$python" bench/peers/torch_dcgan.py --epochs 20 --seed "$s" --out "$out/torch-$s.idx" \
            --json "$out/torch-$s-train.json"
    fi
    "$bin" score --idx "$out/torch-$s.idx" --json "$out/torch-$s.json" --grid "$out/torch-$s.png"
done
