#!/usr/bin/env python3
"""Reference Smart Turn v3.2 probabilities from pipecat's own Python code.

Runs pipecat's vendored Whisper feature extraction
(`pipecat/audio/turn/smart_turn/_whisper_features.py`, loaded straight from
the pipecat-ai wheel that scripts/fetch-models.sh downloads) and the bundled
ONNX model with onnxruntime, exactly as `LocalSmartTurnAnalyzerV3._predict_endpoint`
does: keep the last 8 s (zero-pad at the front), log-mel, one inference.

The audio of each case is what the engine would hand the model when the VAD
stops: the clip from its start to 200 ms (the VAD stop) after the end of
speech. engine/tests/eot.rs asserts the Rust implementation gives the same
probabilities (within 0.02); rerun this script and update the test when the
model or the fixtures change.

Needs: numpy and onnxruntime==1.32.0 (pip install numpy onnxruntime==1.32.0).
Usage: python3 scripts/smart_turn_reference.py
"""

import glob
import importlib.util
import json
import os
import sys
import tempfile
import wave
import zipfile

import numpy as np
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, "models")
FIXTURES = os.path.join(ROOT, "fixtures", "audio")
FEATURES_MEMBER = "pipecat/audio/turn/smart_turn/_whisper_features.py"
VAD_STOP_MS = 200

# (case name, fixture id, end of the audio in ms or None for speech end + VAD stop)
CASES = [
    ("statement_billing", "statement_billing", None),
    ("question_closing_time", "question_closing_time", None),
    ("partial_phone_number", "partial_phone_number", None),
    ("trailing_conjunction_um", "trailing_conjunction_um", None),
    ("mid_pause_card_charge_whole", "mid_pause_card_charge", None),
    # "So the problem is that" + the VAD stop inside the 1500-2100 ms pause.
    ("mid_pause_card_charge_cut_at_pause", "mid_pause_card_charge", 1500 + VAD_STOP_MS),
]


def load_pipecat_features():
    wheels = sorted(glob.glob(os.path.join(MODELS, "wheels", "pipecat_ai-*.whl")))
    if not wheels:
        sys.exit("error: no pipecat-ai wheel in models/wheels; run scripts/fetch-models.sh")
    out_dir = tempfile.mkdtemp(prefix="smart_turn_ref_")
    with zipfile.ZipFile(wheels[-1]) as z:
        path = z.extract(FEATURES_MEMBER, out_dir)
    spec = importlib.util.spec_from_file_location("pipecat_whisper_features", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.compute_whisper_log_mel_features


def truncate_audio_to_last_n_seconds(audio_array, n_seconds=8, sample_rate=16000):
    """Verbatim from pipecat's LocalSmartTurnAnalyzerV3._predict_endpoint."""
    max_samples = n_seconds * sample_rate
    if len(audio_array) > max_samples:
        return audio_array[-max_samples:]
    elif len(audio_array) < max_samples:
        padding = max_samples - len(audio_array)
        return np.pad(audio_array, (padding, 0), mode="constant", constant_values=0)
    return audio_array


def read_wav_16k(path):
    with wave.open(path, "rb") as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1 and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)


def main():
    features = load_pipecat_features()
    so = ort.SessionOptions()
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(os.path.join(MODELS, "smart-turn-v3.2-cpu.onnx"), sess_options=so)
    manifest = {u["id"]: u for u in json.load(open(os.path.join(FIXTURES, "manifest.json")))["utterances"]}

    print(f"onnxruntime {ort.__version__}, numpy {np.__version__}")
    for name, fixture, end_ms in CASES:
        samples = read_wav_16k(os.path.join(FIXTURES, f"{fixture}.16k.wav"))
        if end_ms is None:
            end_ms = manifest[fixture]["speech_end_ms"] + VAD_STOP_MS
        segment = samples[: end_ms * 16].astype(np.float32) / 32768.0  # as base_smart_turn does
        audio = truncate_audio_to_last_n_seconds(segment)
        log_mel = features(audio, do_normalize=True)
        probability = session.run(None, {"input_features": log_mel[None]})[0][0].item()
        print(f"{name:38s} end_ms={end_ms:5d} probability={probability:.4f}")


if __name__ == "__main__":
    main()
