//! The disk's own sync latency under `--dir`: the floor under a synced publish's latency. A
//! 600-byte write followed by `fdatasync`, 3,000 times, first on a quiet disk, then beside a
//! thread that writes and fsyncs 8 MB files the way a storage engine's flushes and compactions
//! do. Each sync waits for the device's cache flush, so the second figure is what a synced
//! commit can expect while the backend's own background writes run.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;

const SYNCS: usize = 3_000;

/// Prints both measurements.
pub(crate) fn probe(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for busy in [false, true] {
        let lat = syncs(dir, busy)?;
        println!(
            "disk ({}): fdatasync after a 600 B write p50 {:.3} ms p99 {:.3} ms p999 {:.3} ms",
            if busy {
                "beside 8 MB writes, each fsynced"
            } else {
                "quiet"
            },
            ms(crate::percentile(&lat, 0.5)),
            ms(crate::percentile(&lat, 0.99)),
            ms(crate::percentile(&lat, 0.999)),
        );
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The sorted sync latencies, with the background writer if `busy`.
fn syncs(dir: &Path, busy: bool) -> Result<Vec<Duration>> {
    let stop = Arc::new(AtomicBool::new(false));
    let background = busy.then(|| {
        let (stop, dir) = (Arc::clone(&stop), dir.to_path_buf());
        std::thread::spawn(move || -> std::io::Result<()> {
            let chunk = vec![0x79u8; 1 << 20];
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let path = dir.join(format!("disk-probe-bg-{}", i % 4));
                let mut f = std::fs::File::create(&path)?;
                for _ in 0..8 {
                    f.write_all(&chunk)?;
                }
                f.sync_all()?;
                i += 1;
            }
            for i in 0..4 {
                let _ = std::fs::remove_file(dir.join(format!("disk-probe-bg-{i}")));
            }
            Ok(())
        })
    });
    let path = dir.join("disk-probe");
    let measured = (|| -> std::io::Result<Vec<Duration>> {
        let mut f = std::fs::File::create(&path)?;
        let record = [0x78u8; 600];
        let mut lat = Vec::with_capacity(SYNCS);
        for _ in 0..SYNCS {
            f.write_all(&record)?;
            let started = Instant::now();
            f.sync_data()?;
            lat.push(started.elapsed());
        }
        Ok(lat)
    })();
    stop.store(true, Ordering::Relaxed);
    if let Some(t) = background {
        t.join()
            .map_err(|_| anyhow::anyhow!("the background writer panicked"))??;
    }
    let _ = std::fs::remove_file(&path);
    let mut lat = measured?;
    lat.sort_unstable();
    Ok(lat)
}
