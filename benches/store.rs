//! Store hot paths without the network: appending 1000 × 1 KiB batches to
//! the commitlog (and dispatching them), and reading records back: copied
//! out, and gathered in place the way pulls do.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ferromq::config::StoreSection;
use ferromq::store::append::{append_batch, AppendContext, AppendEntry};
use ferromq::store::commitlog::{Appender, Gather};
use ferromq::store::record::is_intact;
use ferromq::store::topics::TopicConfig;
use ferromq::store::Store;

fn store(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = StoreSection {
        data_dir: dir.path().to_path_buf(),
        segment_bytes: 256 << 20,
        ..StoreSection::default()
    };
    let (store, _) = Store::open(&cfg).expect("store");
    store
        .topics
        .get_or_create("bench", TopicConfig::with_queues(8))
        .expect("topic");
    let topic: Arc<str> = Arc::from("bench");
    let entries: Vec<AppendEntry> = (0..1000)
        .map(|_| AppendEntry {
            flags: 0,
            born_timestamp: 1,
            properties: BTreeMap::new(),
            body: Bytes::from(vec![7u8; 1024]),
        })
        .collect();
    let ctx = AppendContext {
        born_host: "127.0.0.1:1".parse().expect("addr"),
        store_host: "127.0.0.1:2".parse().expect("addr"),
        now_ms: 1,
    };
    let mut appender = Appender::new(store.log.clone());

    let mut g = c.benchmark_group("store_1000x1KiB");
    g.throughput(Throughput::Elements(1000));
    g.sample_size(20);
    g.bench_function("append+dispatch", |b| {
        b.iter(|| {
            let batch = append_batch(&store, &mut appender, &topic, 0, &entries, ctx).expect("append");
            for d in &batch.dispatch {
                store.dispatch(d).expect("dispatch");
            }
            store.mark_dispatched(batch.end);
        })
    });
    let cq = store.queues.get("bench", 0).expect("queue");
    g.bench_function("read", |b| {
        b.iter(|| {
            let mut out = BytesMut::with_capacity(1100 * 1000);
            for off in 0..1000 {
                let e = cq.get(off).expect("entry");
                store
                    .log
                    .read_into(e.phys_offset, e.size as usize, &mut out)
                    .expect("read");
            }
            out
        })
    });
    // What pulls do now: records gathered as chunks of the mapping.
    g.bench_function("gather", |b| {
        b.iter(|| {
            let mut gather = Gather::new(&store.log);
            for off in 0..1000 {
                let e = cq.get(off).expect("entry");
                gather.push(e.phys_offset, e.size as usize).expect("gather");
            }
            gather.finish()
        })
    });
    // The same with each record's CRC verified, as pulls do since #13.
    g.bench_function("gather+crc", |b| {
        b.iter(|| {
            let mut gather = Gather::new(&store.log);
            for off in 0..1000 {
                let e = cq.get(off).expect("entry");
                let raw = gather.push(e.phys_offset, e.size as usize).expect("gather");
                assert!(is_intact(raw), "intact");
            }
            gather.finish()
        })
    });
    g.finish();
}

criterion_group!(benches, store);
criterion_main!(benches);
