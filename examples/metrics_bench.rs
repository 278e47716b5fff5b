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
    /// What to time: `frame` (everything the driver does per frame), `count` (the two
    /// counter increments), `clock` (the two clock reads) or `histogram` (one sample).
    #[arg(long, default_value = "frame")]
    part: String,
}

/// The driver's per-frame metric calls (or a part of them) around a stand-in for the frame's
/// work.
fn frame(metrics: &Metrics, part: &str, i: u64) {
    match part {
        "count" => {
            metrics.frame_in(Some(Kind::SingleMessage));
            metrics.reply(Some(Kind::Ack), None);
        }
        "clock" => {
            let arrived = Instant::now();
            black_box(arrived.elapsed());
        }
        "histogram" => metrics.frame_handled(Duration::from_nanos(black_box(i) & 0xffff)),
        _ => {
            let arrived = Instant::now();
            metrics.frame_in(Some(Kind::SingleMessage));
            black_box(i);
            metrics.frame_handled(arrived.elapsed());
            metrics.reply(Some(Kind::Ack), None);
        }
    }
}

fn run(metrics: &Arc<Metrics>, part: Option<&str>, threads: usize, frames: u64) -> Duration {
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let metrics = metrics.clone();
            scope.spawn(move || {
                for i in 0..frames {
                    match part {
                        Some(part) => frame(&metrics, part, i),
                        None => {
                            black_box(i);
                        }
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
        let base = run(&metrics, None, threads, args.frames);
        let with = run(&metrics, Some(&args.part), threads, args.frames);
        let per_frame = (with.saturating_sub(base)).as_nanos() as f64 / args.frames as f64;
        println!(
            "part={} threads={threads} frames/thread={} instrumented={:.2?} bare={:.2?} \
             cost={per_frame:.1} ns/frame/thread",
            args.part, args.frames, with, base
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
