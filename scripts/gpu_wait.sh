#!/usr/bin/env bash
# Wait for a background scripts/gpu_campaign.sh run: return when OUT_DIR/DONE appears or after
# SECONDS_MAX, print the tail of each log, and once DONE copy OUT_DIR.bundle/* into DEST_DIR.
# Until then each call leaves DEST_DIR/progress.tgz (every log, loss curve and training config so
# far, a few hundred kB): a machine lost between two calls then still leaves its curves behind.
# A campaign longer than one command's time limit is then started once and followed by this same
# command until it reports DONE.
# Usage: scripts/gpu_wait.sh OUT_DIR DEST_DIR [SECONDS_MAX (default 560)]
set -uo pipefail
OUT=${1:?usage: scripts/gpu_wait.sh OUT_DIR DEST_DIR [SECONDS_MAX]}
DEST=${2:?usage: scripts/gpu_wait.sh OUT_DIR DEST_DIR [SECONDS_MAX]}
MAX=${3:-560}
start=$(date +%s)
while [ ! -f "$OUT/DONE" ] && [ $(( $(date +%s) - start )) -lt "$MAX" ]; do sleep 5; done
for log in "$OUT"/*.log; do
  # The last two lines that say something (not a warning's traceback), progress bars' \r included.
  [ -f "$log" ] && { echo "== $log"; tr '\r' '\n' < "$log" | grep -v -e '^\s*$' -e 'Warning' -e 'warn' \
      -e '^\s*File "' -e '^\s*This call originates' -e '^\s*if ' | tail -n 2 | cut -c1-300; }
done
for loss in "$OUT"/*/loss.jsonl; do  # each training's last logged step: step, loss, images/s
  [ -f "$loss" ] && echo "== $loss: $(tail -n 1 "$loss" | cut -c1-200)"
done
nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader 2>/dev/null
mkdir -p "$DEST"
(cd "$OUT" && find . -maxdepth 4 -type f \( -name '*.log' -o -name 'loss.jsonl' -o -name '*.json' \) -size -8M \
    | tar czf "$DEST/progress.tgz" -T -)
if [ -f "$OUT/DONE" ]; then
  cp "$OUT.bundle"/* "$DEST"/ && echo "DONE: bundle copied to $DEST"
else
  echo "not done after $MAX s"
fi
