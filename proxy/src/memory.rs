//! Memory the proxy needs only to start: the JSON mapping's descriptor pool (built to read a
//! YAML/JSON bootstrap from only the descriptor files the document names, a few MiB of heap; the
//! full pool of every Envoy message was 33 MiB), the pages of the embedded descriptor set it was
//! decoded from (about 0.6 MB of the binary, comments stripped), and the resident pages of the
//! machine code that ran only for start-up (reading the bootstrap, the reflection-based JSON
//! mapping: most of the 10 MiB of text the kernel maps in, 64 KiB around every first touch). A
//! sidecar runs in every pod, so once the bootstrap is parsed all three are handed back to the
//! OS; the xDS path decodes protobuf directly and never needs the pool, `/config_dump` decodes a
//! transient one when asked, and the code the proxy keeps running faults back in from the page
//! cache.
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
        release_text_pages();
    }
}

/// Once the proxy is up (listeners bound, static config applied), drops the resident pages of
/// the code that ran only to start it, so that what stays mapped is the code serving traffic.
pub fn release_startup_code() {
    release_text_pages();
}

/// Drops the descriptor pool (later uses decode a transient one), returns the freed heap pages
/// and the descriptor set's resident pages to the OS. Call once the bootstrap is parsed.
pub fn release_bootstrap_memory() {
    xds_proto::json::retain_pool(false);
    release_free_heap();
    release_descriptor_pages();
    release_text_pages();
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

/// Unmaps the resident pages of the binary's machine code, so that only the code that runs again
/// (the data path, xDS, admin) is mapped back in, from the page cache, on its next use. Start-up
/// touched far more: the bootstrap's YAML and reflection-based JSON mapping, and with the
/// kernel's fault-around every first touch maps 64 KiB. Measured on the benchmark's bootstrap:
/// 10.4 MiB of file-backed RSS at idle, 2.6 MiB right after this, 7.1 MiB after serving
/// requests (the rest, about 3 MiB, was start-up only).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn release_text_pages() {
    let Some((start, end)) = own_text_mapping() else {
        return;
    };
    // SAFETY: [start, end) is exactly one mapping listed in /proc/self/maps as `r-xp`, private
    // and backed by a file, that contains this function: the binary's own machine code, which
    // is never written (Rust binaries have no text relocations). For such a mapping
    // MADV_DONTNEED only drops the page-table entries; the next instruction fetch or read faults
    // the identical bytes back in from the file, so no code or value changes.
    let result =
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    tracing::debug!(bytes = end - start, ok = result == 0, "code pages released");
}

#[cfg(not(target_os = "linux"))]
fn release_text_pages() {}

/// The `r-xp` file mapping of /proc/self/maps that holds this function: the binary's code.
#[cfg(target_os = "linux")]
fn own_text_mapping() -> Option<(usize, usize)> {
    let here = own_text_mapping as fn() -> Option<(usize, usize)> as usize;
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (range, perms, _offset, _device, inode) = (
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
        );
        let (lo, hi) = range.split_once('-')?;
        let lo = usize::from_str_radix(lo, 16).ok()?;
        let hi = usize::from_str_radix(hi, 16).ok()?;
        (lo <= here && here < hi && perms == "r-xp" && inode != "0").then_some((lo, hi))
    })
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// Resident KiB of the mapping starting at `start`, from /proc/self/smaps.
    fn resident_kib(start: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("/proc/self/smaps");
        let header = format!("{start:x}-");
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&header));
        lines
            .find_map(|l| l.strip_prefix("Rss:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .expect("the mapping's Rss line")
    }

    #[test]
    fn code_pages_are_released_and_fault_back_in() {
        let (start, end) = own_text_mapping().expect("the test binary's code mapping");
        assert!(end > start);
        // Touch every page once so that they are all resident before the release.
        let mut page = start;
        let mut sum = 0u64;
        while page < end {
            // SAFETY: `page` lies inside a readable (`r-xp`) mapping of this process.
            #[allow(unsafe_code)]
            let byte = unsafe { std::ptr::read_volatile(page as *const u8) };
            sum = sum.wrapping_add(u64::from(byte));
            page += 4096;
        }
        let before = resident_kib(start);
        // Other tests run concurrently and fault code back in between the release and the
        // reading of smaps (on a busy 2-core machine, once, more than half of it): the release
        // is repeated a few times and the lowest reading counts.
        let after = (0..5)
            .map(|_| {
                release_text_pages();
                resident_kib(start)
            })
            .min()
            .expect("five readings");
        assert!(
            after < before / 2,
            "{after} KiB resident after, {before} KiB before ({sum})"
        );
        // And the code still runs: this call goes through released pages.
        assert_eq!(own_text_mapping(), Some((start, end)));
    }

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
