#!/usr/bin/env bash
# Pack a results folder for a trip through a size-limited transfer: one .tar.gz of everything but
# training checkpoints, per-image PNGs and the grids of seeds other than 0 (seed 0's grids and misses
# sheets, figures, logs, JSON and exported .safetensors are kept), split into parts of at most PART_MB.
# Unpack with: cat DEST/bundle.tgz.part-* | tar xz
# Usage: scripts/bundle_results.sh SRC_DIR DEST_DIR [PART_MB (default 15)]
set -euo pipefail
SRC=${1:?usage: scripts/bundle_results.sh SRC_DIR DEST_DIR [PART_MB]}
DEST=${2:?usage: scripts/bundle_results.sh SRC_DIR DEST_DIR [PART_MB]}
PART_MB=${3:-15}
mkdir -p "$DEST"
list=$(mktemp)
(
  cd "$SRC"
  find . -type f ! -path '*/checkpoint/*' ! -path '*/images/*'
  # seed 0's grids and misses sheets: the other seeds' are the same kind of picture
  find . -type f -path '*/images/*/seed0/*' \( -name '*grid*' -o -name '*misses*' \)
) | sort > "$list"
tar czf - -C "$SRC" -T "$list" | split -b "${PART_MB}M" - "$DEST/bundle.tgz.part-"
echo "$(wc -l < "$list") files from $SRC -> $(ls "$DEST"/bundle.tgz.part-* | wc -l) part(s) in $DEST ($(du -ch "$DEST"/bundle.tgz.part-* | tail -1 | cut -f1))"
rm -f "$list"
