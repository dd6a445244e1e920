//! In-process dispatch of a typed event: to one handler, and to ten.
//!
//! `cargo bench -p canon-sdk --bench dispatch`

#![allow(missing_docs, clippy::unwrap_used, reason = "benchmark")]

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use canon_sdk::{Dispatcher, Event};
use criterion::{Criterion, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[canon(type = "quest.completed", version = "1.0.0")]
struct QuestCompleted {
    #[canon(aggregate, idempotency)]
    user_id: i64,
    #[canon(idempotency)]
    quest_id: i64,
    experience_reward: i64,
}

fn dispatcher(handlers: usize, sum: &Arc<AtomicU64>) -> Dispatcher {
    let d = Dispatcher::new();
    for i in 0..handlers {
        let sum = Arc::clone(sum);
        d.on::<QuestCompleted, _>(&format!("h{i}"), ">=1.0, <2.0", move |q, _| {
            sum.fetch_add(q.experience_reward as u64, Ordering::Relaxed);
            Ok(())
        })
        .unwrap();
    }
    d
}

fn bench(c: &mut Criterion) {
    let sum = Arc::new(AtomicU64::new(0));
    let event = QuestCompleted {
        user_id: 123,
        quest_id: 456,
        experience_reward: 25,
    };
    for n in [1, 10] {
        let d = dispatcher(n, &sum);
        c.bench_function(&format!("publish typed event to {n} handler(s)"), |b| {
            b.iter(|| {
                let r = d.publish(black_box(event.clone()));
                assert_eq!(r.handled, n);
            });
        });
    }
    black_box(sum.load(Ordering::Relaxed));
}

criterion_group!(benches, bench);
criterion_main!(benches);
