#!/bin/sh
# Seeds fuzz/corpus/<target>/ from the repository's real files (run from fuzz/): the shipped
# weights, a configuration of every preset, the bundled IDX data (gzipped and raw, cut to a few
# digits) and a checkpoint of a short run.
set -eu
cd "$(dirname "$0")"
for t in weights weights_repaired checkpoint checkpoint_repaired idx config; do
    mkdir -p "corpus/$t"
done
for f in ../data/weights/*.ganw ../data/classifier/*.ganw; do
    cp "$f" corpus/weights/
    cp "$f" corpus/weights_repaired/
done
gan() { cargo run --quiet --release --manifest-path ../Cargo.toml -p gan-train -- "$@"; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
gan train --arch custom --latent 8 --g-hidden 16 --d-hidden 16 --batch 16 --limit 64 \
    --epochs 1 --quality-every 0 --quiet --run "$tmp/run"
cp "$tmp/run/checkpoint.bin" corpus/checkpoint/tiny.bin
cp "$tmp/run/checkpoint.bin" corpus/checkpoint_repaired/tiny.bin
cp "$tmp/run/config.toml" corpus/config/custom.toml
for arch in pico mcu dcgan classic; do
    gan train --arch "$arch" --epochs 1 --max-steps 1 --quality-every 0 --quiet --limit 64 \
        --run "$tmp/$arch" >/dev/null
    cp "$tmp/$arch/config.toml" "corpus/config/$arch.toml"
done
cp ../data/mnist-10k/labels-idx1-ubyte.gz corpus/idx/labels.gz
gzip -dc ../data/mnist-10k/images-idx3-ubyte.gz | head -c 15696 > corpus/idx/images-20
echo "corpus ready in $(pwd)/corpus"
