//! Memory the proxy needs only to start: the JSON mapping's descriptor pool (about 33 MiB of
//! heap, built to read a YAML/JSON bootstrap) and the pages of the embedded descriptor set it was
//! decoded from (about 3.2 MiB of the binary). A sidecar runs in every pod, so once the bootstrap
//! is parsed both are handed back to the OS; the xDS path decodes protobuf directly and never
//! needs them, and `/config_dump` decodes a transient pool when asked.
//!
//! This is the one module allowed `unsafe`: two libc calls (`malloc_trim`, `madvise`) that the
//! standard library does not wrap, each with its safety argument.

/// After an admin answer decoded a transient descriptor pool: unless the pool is still alive
/// (retained, as in tests and the control plane, or in use by a concurrent answer), returns the
/// freed heap and the descriptor set's pages to the OS again.
pub fn release_transient_memory() {
    if !xds_proto::json::pool_is_alive() {
        release_free_heap();
        release_descriptor_pages();
    }
}

/// Drops the descriptor pool (later uses decode a transient one), returns the freed heap pages
/// and the descriptor set's resident pages to the OS. Call once the bootstrap is parsed.
pub fn release_bootstrap_memory() {
    xds_proto::json::retain_pool(false);
    release_free_heap();
    release_descriptor_pages();
}

/// Returns the heap's free pages to the OS. Freeing the descriptor pool leaves its pages free but
/// resident: glibc gives back only the top of the heap, and a few small long-lived allocations
/// made while the pool was alive sit above it. `malloc_trim` also releases free pages in the
/// middle of the heap (glibc >= 2.8), which is what takes idle RSS from ~40 MiB to the live set.
/// The xDS client calls it too, after applying a large response: the decoded protobuf of a
/// mesh's config (megabytes) is freed once validated, and would otherwise stay resident.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_free_heap() {
    // SAFETY: malloc_trim takes no pointers and only walks glibc's own free lists under its
    // arena locks; it cannot invalidate any live allocation.
    let released = unsafe { libc::malloc_trim(0) };
    tracing::debug!(released = released != 0, "free heap returned to the OS");
}

/// Nothing to return on this platform's allocator.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_heap() {}

/// Drops the resident copies of the embedded descriptor set's pages (about 3.2 MiB of the
/// binary's read-only data): decoding the pool read every page once, and file-backed pages stay
/// in RSS until memory pressure. A later `/config_dump` faults them back in from the binary.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn release_descriptor_pages() {
    let bytes = xds_proto::json::descriptor_set();
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let start = (bytes.as_ptr() as usize).next_multiple_of(page);
    let end = (bytes.as_ptr() as usize + bytes.len()) / page * page;
    if end > start && in_read_only_file_mapping(start, end) {
        // SAFETY: [start, end) lies wholly inside an `include_bytes!` static, and (checked
        // above) inside a read-only, private, file-backed mapping, which is never written. For
        // such a mapping MADV_DONTNEED only discards the resident copies; the next read faults
        // the identical bytes back in from the file, so no Rust-visible value changes.
        let result =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        tracing::debug!(
            bytes = end - start,
            ok = result == 0,
            "descriptor pages released"
        );
    }
}

/// Whether `/proc/self/maps` shows [start, end) inside one `r--p` mapping of a file.
#[cfg(target_os = "linux")]
fn in_read_only_file_mapping(start: usize, end: usize) -> bool {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return false;
    };
    maps.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms), Some(_), Some(_), Some(inode)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            return false;
        };
        let Some((lo, hi)) = range.split_once('-') else {
            return false;
        };
        let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
        else {
            return false;
        };
        lo <= start && end <= hi && perms == "r--p" && inode != "0"
    })
}

#[cfg(not(target_os = "linux"))]
fn release_descriptor_pages() {}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn only_read_only_file_pages_are_released() {
        let bytes = xds_proto::json::descriptor_set();
        let start = bytes.as_ptr() as usize;
        assert!(in_read_only_file_mapping(start, start + bytes.len()));
        let heap = vec![0u8; 64 * 1024];
        let start = heap.as_ptr() as usize;
        assert!(!in_read_only_file_mapping(start, start + heap.len()));
        release_descriptor_pages();
        // The bytes read back unchanged (faulted in again from the file).
        let pool = xds_proto::json::pool();
        assert!(
            pool.get_message_by_name("envoy.config.bootstrap.v3.Bootstrap")
                .is_some()
        );
    }
}
