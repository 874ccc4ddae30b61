//! How the process takes memory from the kernel.
//!
//! Both binaries allocate with mimalloc, which maps its memory in large, aligned regions. Where
//! the kernel backs every such region with transparent huge pages (`enabled = always`), each
//! first touch of a region zeroes a whole 2 MiB page: in the intake benchmark, with memory
//! growing by a live actor per accepted delivery, that zeroing took more than a third of the
//! runtime threads' time, and turning huge pages off for the process raised saturation
//! throughput by about a sixth (`bench/RESULTS.md`).

/// Turns transparent huge pages off for this process (Linux `PR_SET_THP_DISABLE`, which covers
/// every thread and later mapping of the process, and is inherited by its children). A kernel
/// without the setting leaves the process as it was, which costs speed, not correctness, so
/// the error is returned for the caller to report or ignore.
pub fn without_huge_pages() -> std::io::Result<()> {
    rustix::thread::disable_transparent_huge_pages(true)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_process_is_left_without_huge_pages() {
        // A kernel or sandbox that refuses the setting leaves nothing to check.
        if super::without_huge_pages().is_err() {
            return;
        }
        assert!(rustix::thread::transparent_huge_pages_are_disabled().unwrap());
    }
}
