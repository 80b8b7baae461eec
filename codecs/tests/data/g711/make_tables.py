#!/usr/bin/env python3
"""Regenerate the G.711 reference tables used by codecs/tests/g711_reference.rs.

The tables come from Python 3.11's `audioop` (CPython's C module, Sun's G.711
code), an implementation no one on this project wrote. SoX (`sox -D`, no dither)
is a second witness: its decode tables must agree exactly; its encoder rounds the
dropped low bits where audioop truncates them, so at the decision thresholds some
inputs land one quantization step apart. The script checks that every such
disagreement is exactly one step (adjacent codes) and reports the count.

Files (all little-endian, mono):
  ulaw_encode.bin, alaw_encode.bin  65,536 codes: the code for every i16 input,
                                    inputs in order -32768, -32767, ..., 32767
  ulaw_decode.bin, alaw_decode.bin  256 i16 values: the sample for codes 0..255

Run from anywhere: python3 codecs/tests/data/g711/make_tables.py
"""
import array
import audioop  # deprecated in 3.11, removed in 3.13: run this with Python 3.11
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def every_i16() -> bytes:
    return array.array("h", range(-32768, 32768)).tobytes()


def every_code() -> bytes:
    return bytes(range(256))


def sox(args_in, data: bytes, args_out) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.raw"), os.path.join(tmp, "out.raw")
        with open(src, "wb") as f:
            f.write(data)
        subprocess.run(["sox", "-D", *args_in, src, *args_out, dst], check=True)
        with open(dst, "rb") as f:
            return f.read()


def main() -> int:
    assert sys.byteorder == "little"
    pcm, codes = every_i16(), every_code()
    raw16 = ["-t", "raw", "-r", "8000", "-c", "1", "-e", "signed-integer", "-b", "16"]
    tables = {
        "ulaw_encode.bin": (audioop.lin2ulaw(pcm, 2),
                            sox(raw16, pcm, ["-t", "raw", "-e", "mu-law", "-b", "8"])),
        "alaw_encode.bin": (audioop.lin2alaw(pcm, 2),
                            sox(raw16, pcm, ["-t", "raw", "-e", "a-law", "-b", "8"])),
        "ulaw_decode.bin": (audioop.ulaw2lin(codes, 2),
                            sox(["-t", "raw", "-r", "8000", "-c", "1", "-e", "mu-law", "-b", "8"],
                                codes, ["-t", "raw", "-e", "signed-integer", "-b", "16"])),
        "alaw_decode.bin": (audioop.alaw2lin(codes, 2),
                            sox(["-t", "raw", "-r", "8000", "-c", "1", "-e", "a-law", "-b", "8"],
                                codes, ["-t", "raw", "-e", "signed-integer", "-b", "16"])),
    }
    failed = False
    for name, (ours, theirs) in tables.items():
        if name.endswith("_decode.bin"):
            if ours != theirs:
                print(f"{name}: audioop and sox decode differently", file=sys.stderr)
                failed = True
        else:
            decode = audioop.ulaw2lin if name.startswith("ulaw") else audioop.alaw2lin
            diffs = [i for i in range(65536) if ours[i] != theirs[i]]
            for i in diffs:
                a = int.from_bytes(decode(bytes([ours[i]]), 2), "little", signed=True)
                b = int.from_bytes(decode(bytes([theirs[i]]), 2), "little", signed=True)
                x = i - 32768
                # Both codes must be the neighbours around x (x lies between them).
                if not (min(a, b) <= x + 8 and x - 8 <= max(a, b)) and abs(ours[i] - theirs[i]) != 1:
                    print(f"{name}: input {x}: audioop {a}, sox {b}: not adjacent", file=sys.stderr)
                    failed = True
            print(f"{name}: sox rounds {len(diffs)} threshold inputs to the adjacent code")
        with open(os.path.join(HERE, name), "wb") as f:
            f.write(ours)
        print(f"wrote {name} ({len(ours)} bytes)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
