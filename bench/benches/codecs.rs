//! Time per 20 ms frame of every codec stage on the hot path.
//! Run: `cargo bench -p callingbox-bench --bench codecs`. Figures in bench/README.md.

use std::hint::black_box;

use callingbox_bench::voiced_frame;
use callingbox_codecs::opus::MAX_PACKET_BYTES;
use callingbox_codecs::{
    FrameDuration, G711Law, G722Decoder, G722Encoder, MediaTime, OpusDecoder, OpusEncoder,
    OpusEncoderConfig, PcmFrame, Resampler, SampleRate,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn g711(c: &mut Criterion) {
    let frame = voiced_frame(SampleRate::Hz8000);
    let mut group = c.benchmark_group("g711");
    group.throughput(Throughput::Elements(frame.len() as u64));
    for (name, law) in [("mulaw", G711Law::MuLaw), ("alaw", G711Law::ALaw)] {
        let mut codes = vec![0u8; frame.len()];
        group.bench_function(format!("{name}_encode_20ms"), |b| {
            b.iter(|| law.encode(black_box(frame.samples()), black_box(&mut codes)))
        });
        let mut out = PcmFrame::with_capacity(SampleRate::Hz8000, FrameDuration::Ms20);
        group.bench_function(format!("{name}_decode_20ms"), |b| {
            b.iter(|| law.decode_into(black_box(&codes), MediaTime::ZERO, black_box(&mut out)))
        });
    }
    group.finish();
}

fn g722(c: &mut Criterion) {
    let frame = voiced_frame(SampleRate::Hz16000);
    let mut group = c.benchmark_group("g722");
    group.throughput(Throughput::Elements(frame.len() as u64));
    let mut encoder = G722Encoder::new();
    let mut codes = vec![0u8; frame.len() / 2];
    group.bench_function("encode_20ms", |b| {
        b.iter(|| encoder.encode(black_box(frame.samples()), black_box(&mut codes)))
    });
    let mut decoder = G722Decoder::new();
    let mut out = PcmFrame::with_capacity(SampleRate::Hz16000, FrameDuration::Ms20);
    group.bench_function("decode_20ms", |b| {
        b.iter(|| decoder.decode_into(black_box(&codes), MediaTime::ZERO, black_box(&mut out)))
    });
    group.finish();
}

fn opus(c: &mut Criterion) {
    let mut group = c.benchmark_group("opus");
    for rate in [SampleRate::Hz8000, SampleRate::Hz16000, SampleRate::Hz48000] {
        let frame = voiced_frame(rate);
        let mut encoder =
            OpusEncoder::new(rate, OpusEncoderConfig::default()).expect("opus encoder");
        let mut packet = vec![0u8; MAX_PACKET_BYTES];
        group.bench_function(format!("encode_20ms_{}k", rate.hz() / 1000), |b| {
            b.iter(|| encoder.encode(black_box(&frame), black_box(&mut packet)))
        });
        let n = encoder.encode(&frame, &mut packet).expect("encode");
        let mut decoder = OpusDecoder::new(rate).expect("opus decoder");
        let mut out = PcmFrame::with_capacity(rate, FrameDuration::Ms20);
        group.bench_function(format!("decode_20ms_{}k", rate.hz() / 1000), |b| {
            b.iter(|| decoder.decode_into(black_box(&packet[..n]), MediaTime::ZERO, &mut out))
        });
    }
    group.finish();
}

fn resample(c: &mut Criterion) {
    let mut group = c.benchmark_group("resample");
    for (from, to) in [
        (SampleRate::Hz8000, SampleRate::Hz16000),
        (SampleRate::Hz16000, SampleRate::Hz8000),
        (SampleRate::Hz24000, SampleRate::Hz8000),
        (SampleRate::Hz48000, SampleRate::Hz16000),
    ] {
        let frame = voiced_frame(from);
        let mut resampler = Resampler::new(from, to, FrameDuration::Ms20).expect("resampler");
        let mut out = PcmFrame::with_capacity(to, FrameDuration::Ms20);
        group.bench_function(
            format!("{}k_to_{}k_20ms", from.hz() / 1000, to.hz() / 1000),
            |b| b.iter(|| resampler.process_into(black_box(&frame), black_box(&mut out))),
        );
    }
    group.finish();
}

criterion_group!(benches, g711, g722, opus, resample);
criterion_main!(benches);
