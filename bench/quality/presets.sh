#!/bin/sh
# Trains each preset with its default recipe on the bundled digits and prints the calibration
# table of `gan-train score` with their generators as extra rows (docs/QUALITY.md).
#
#   bench/quality/presets.sh [OUT_DIR]      (default OUT_DIR: runs/presets; about 15 minutes
#                                            on two cores, most of it the dcgan run)
set -eu
out=${1:-runs/presets}
cargo build --release -p gan-train
bin=target/release/gan-train
mkdir -p "$out"
train() {
    name=$1
    shift
    if [ ! -f "$out/$name/generator.ganw" ]; then
        rm -rf "${out:?}/$name"
        "$bin" train --run "$out/$name" --quiet "$@"
    fi
}
train mcu
train mcu-conditional --conditional
train dcgan --arch dcgan
"$bin" score --calibrate \
    --models "$out/mcu/generator.ganw,$out/mcu-conditional/generator.ganw,$out/dcgan/generator.ganw"
