//! The `ferromq` binary: see `ferromq --help`.

fn main() {
    keep_freed_memory();
    std::process::exit(ferromq::cli::main());
}

/// Frames of up to a few MiB are allocated and freed continuously (send
/// batches, pull responses). glibc would hand such blocks back to the kernel
/// on free (mmap'ed chunks, heap trimming), and every reallocation then
/// faults in and zeroes fresh pages, which profiles showed at 5–8% of broker
/// and client CPU. Keeping up to 64 MiB of freed heap avoids that.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 16 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}
