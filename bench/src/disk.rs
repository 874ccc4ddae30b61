//! What one durable commit costs on this disk: the latency of a 4 KiB write followed by
//! `fdatasync`, measured in the folder the database lives in, two ways. Appending grows the
//! file, so each sync also commits the file system's metadata; overwriting a preallocated
//! region, as SQLite does once its write-ahead log has wrapped, syncs the data alone.

use std::fs::File;
use std::io::{Seek as _, SeekFrom, Write as _};
use std::path::Path;
use std::time::Instant;

use anyhow::Context as _;

use crate::latency::Latency;

/// Bytes written per round.
const BLOCK: usize = 4096;

/// Sync latencies of appending and of overwriting.
pub(crate) struct SyncLatency {
    /// Each round appends a block.
    pub(crate) append: Latency,
    /// Each round overwrites a block of a preallocated 1 MiB region.
    pub(crate) overwrite: Latency,
}

/// Measures `rounds` rounds of each kind in `dir`.
pub(crate) fn sync_latency(dir: &Path, rounds: usize) -> anyhow::Result<SyncLatency> {
    let path = dir.join("fsync-probe");
    let mut file = File::create(&path).context("creating the fsync probe file")?;
    let block = [0x5au8; BLOCK];
    let append = timed(rounds, || {
        file.write_all(&block)?;
        file.sync_data()
    })?;
    let region = 256u64;
    file.set_len(region * BLOCK as u64)?;
    file.sync_all()?;
    let mut i = 0u64;
    let overwrite = timed(rounds, || {
        file.seek(SeekFrom::Start((i % region) * BLOCK as u64))?;
        i += 1;
        file.write_all(&block)?;
        file.sync_data()
    })?;
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(SyncLatency { append, overwrite })
}

fn timed(rounds: usize, mut round: impl FnMut() -> std::io::Result<()>) -> anyhow::Result<Latency> {
    let mut latency = Latency::new();
    for _ in 0..rounds {
        let start = Instant::now();
        round().context("writing and syncing the probe file")?;
        latency.record(start.elapsed());
    }
    Ok(latency)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_measures_every_round_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let latency = sync_latency(dir.path(), 3).unwrap();
        assert_eq!(latency.append.count(), 3);
        assert_eq!(latency.overwrite.count(), 3);
        assert!(!dir.path().join("fsync-probe").exists());
    }
}
