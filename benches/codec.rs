//! Codec hot paths: a 1000 × 1 KiB send batch encoded and decoded, and a
//! frame split off a buffer.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ferromq::wire::send::{SendEntry, SendRequest};
use ferromq::wire::{Command, Frame};

fn batch() -> SendRequest {
    let mut properties = BTreeMap::new();
    properties.insert("TAGS".to_string(), "created".to_string());
    let entries = (0..1000)
        .map(|_| SendEntry {
            flags: 0,
            born_timestamp: 1,
            properties: properties.clone(),
            body: Bytes::from(vec![7u8; 1024]),
        })
        .collect();
    SendRequest {
        topic: "bench".into(),
        queue_id: 3,
        entries,
    }
}

fn codec(c: &mut Criterion) {
    let req = batch();
    let encoded = req.encode();
    let mut g = c.benchmark_group("send_batch_1000x1KiB");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("encode", |b| b.iter(|| req.encode()));
    g.bench_function("decode", |b| b.iter(|| SendRequest::decode(encoded.clone())));
    g.finish();

    let frame = Frame::request(Command::SendMessage, 1, Bytes::new(), encoded);
    let mut wire = BytesMut::new();
    frame.encode(&mut wire);
    let mut g = c.benchmark_group("frame_1MiB");
    g.throughput(Throughput::Bytes(wire.len() as u64));
    g.bench_function("encode", |b| {
        b.iter(|| {
            let mut out = BytesMut::with_capacity(frame.encoded_len());
            frame.encode(&mut out);
            out
        })
    });
    g.bench_function("parse", |b| b.iter(|| Frame::parse(&mut wire.clone(), 16 << 20)));
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
