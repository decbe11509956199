//! The cost of asking another core for a cached object: the hop the
//! key-ownership proposal in docs/cache.md adds to every request for a key
//! this worker does not own. Two threads pinned to two CPUs exchange a
//! lookup (the key's hash) and its answer (a shared `Bytes`) over
//! crossbeam channels, the owner polling its queue as a busy worker would
//! between I/O events. What it measures is the floor — a sleeping owner
//! must also be woken (an eventfd write and an io_uring completion).
//!
//! `cargo bench --bench cross_core_hop`

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use crossbeam_channel::{Receiver, Sender, bounded};

fn pin(index: usize) {
    if let Some(cores) = core_affinity::get_core_ids()
        && let Some(core) = cores.get(index % cores.len().max(1))
    {
        core_affinity::set_for_current(*core);
    }
}

/// The owning worker: answers lookups from its shard until told to stop.
fn owner(asks: Receiver<u64>, answers: Sender<Option<Bytes>>, stop: Arc<AtomicBool>) {
    pin(1);
    let shard: HashMap<u64, Bytes> = (0..10_000u64)
        .map(|k| (k, Bytes::from(vec![b'x'; 1000])))
        .collect();
    while !stop.load(Ordering::Relaxed) {
        match asks.try_recv() {
            Ok(key) => {
                let _ = answers.send(shard.get(&key).cloned());
            }
            Err(_) => std::hint::spin_loop(),
        }
    }
}

fn hop(c: &mut Criterion) {
    let (ask_tx, ask_rx) = bounded(1024);
    let (answer_tx, answer_rx) = bounded(1024);
    let stop = Arc::new(AtomicBool::new(false));
    let owner_stop = stop.clone();
    let thread = std::thread::spawn(move || owner(ask_rx, answer_tx, owner_stop));
    pin(0);
    let local: HashMap<u64, Bytes> = (0..10_000u64)
        .map(|k| (k, Bytes::from(vec![b'x'; 1000])))
        .collect();
    let mut group = c.benchmark_group("cache_lookup");
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("own_shard", |b| {
        let mut key = 0u64;
        b.iter(|| {
            key = (key + 7) % 10_000;
            std::hint::black_box(local.get(&key).cloned())
        })
    });
    group.bench_function("owner_on_another_core", |b| {
        let mut key = 0u64;
        b.iter_custom(|iterations| {
            let start = Instant::now();
            for _ in 0..iterations {
                key = (key + 7) % 10_000;
                let _ = ask_tx.send(key);
                loop {
                    match answer_rx.try_recv() {
                        Ok(answer) => {
                            std::hint::black_box(answer);
                            break;
                        }
                        Err(_) => std::hint::spin_loop(),
                    }
                }
            }
            start.elapsed()
        })
    });
    group.finish();
    stop.store(true, Ordering::Relaxed);
    let _ = thread.join();
}

criterion_group!(benches, hop);
criterion_main!(benches);
