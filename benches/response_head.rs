//! Parsing an upstream's response head, as Sluice's HTTP/1.1 client does once per stream:
//! a provider's 25-field head (OpenAI's, values made up) and a 3-field one.
//! `cargo bench --bench response_head`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice::http1::parse_response_head;

#[path = "common/heads.rs"]
mod heads;
use heads::{MINIMAL_HEAD, PROVIDER_HEAD};

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("response_head");
    for (name, head) in [("provider", PROVIDER_HEAD), ("minimal", MINIMAL_HEAD)] {
        group.throughput(Throughput::Bytes(head.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let (head, used) = parse_response_head(std::hint::black_box(head), 64 * 1024)
                    .unwrap()
                    .unwrap();
                std::hint::black_box((head, used))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
