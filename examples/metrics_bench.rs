//! What the metrics cost per frame: the calls the connection driver makes for every client
//! frame (count it in, time its handling, count its reply), timed on one thread and on
//! several threads sharing one node's handles, against the same loop without them.
//!
//! ```sh
//! cargo run --release --example metrics_bench -- --frames 10000000 --threads 2
//! ```

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use im_connect::admin::{Metrics, Snapshot};
use im_connect::protocol::Kind;

/// Command line of the benchmark.
#[derive(Debug, Parser)]
struct Args {
    /// Frames per thread.
    #[arg(long, default_value_t = 10_000_000)]
    frames: u64,
    /// Threads sharing one set of metrics.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// The driver's per-frame metric calls around a stand-in for the frame's work.
fn frame(metrics: &Metrics, i: u64) {
    let arrived = Instant::now();
    metrics.frame_in(Some(Kind::SingleMessage));
    black_box(i);
    metrics.frame_handled(arrived.elapsed());
    metrics.reply(Some(Kind::Ack), None);
}

fn run(metrics: &Arc<Metrics>, threads: usize, frames: u64, instrumented: bool) -> Duration {
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let metrics = metrics.clone();
            scope.spawn(move || {
                for i in 0..frames {
                    if instrumented {
                        frame(&metrics, i);
                    } else {
                        black_box(i);
                    }
                }
            });
        }
    });
    started.elapsed()
}

fn main() {
    let args = Args::parse();
    let metrics = Arc::new(Metrics::new());
    for threads in [1, args.threads] {
        let base = run(&metrics, threads, args.frames, false);
        let with = run(&metrics, threads, args.frames, true);
        let per_frame = (with.saturating_sub(base)).as_nanos() as f64 / args.frames as f64;
        println!(
            "threads={threads} frames/thread={} instrumented={:.2?} bare={:.2?} \
             cost={per_frame:.1} ns/frame/thread",
            args.frames, with, base
        );
        // Histogram samples wait in the recorder until upkeep folds them into buckets.
        let started = Instant::now();
        metrics.upkeep();
        println!("upkeep after the run: {:.2?}", started.elapsed());
    }
    let text = metrics.render(&Snapshot::default());
    let count = text
        .lines()
        .find(|l| l.starts_with("im_frame_handling_seconds_count"))
        .unwrap_or("im_frame_handling_seconds_count missing");
    println!("{count}");
}
