//! The consumer side of a BPF ring buffer, read in batches.
//!
//! aya's reader publishes the consumer position after every record. The producer (a probe
//! hit on the other CPU) reads that position on every reserve, so each record moved one
//! cache line between the CPUs and back. This reader publishes it once per batch: at the
//! end of a drain, and every eighth of the ring while a long drain is under way, so the
//! producer never waits long for the room it frees.
//!
//! Layout (kernel/bpf/ringbuf.c): page 0 holds the consumer position (the only page user
//! space may write); page 1 the producer position; then the data pages, mapped twice in a
//! row so a record that wraps around the end reads as one slice. Each record starts with
//! an 8-byte header: its length with the busy and discard bits, and a page offset.
//!
//! Publishing late is safe only because our programs never rely on the kernel's default
//! wakeup (which fires when a record is committed at the consumer position): they submit
//! with `BPF_RB_NO_WAKEUP`, or force one when the ring fills, and the reader drains on a
//! timer as well.
//!
//! The producer pages are mapped read-only, where Rust guarantees only `Relaxed` atomic
//! loads (std::sync::atomic, "Atomic accesses to read-only memory"): each load is
//! `Relaxed`, then an `Acquire` fence orders the reads of the record after it.

use std::{
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicUsize, Ordering, fence},
};

use aya::maps::MapData;

const HEADER: usize = 8;
const BUSY: u32 = 1 << 31;
const DISCARD: u32 = 1 << 30;

pub struct Ring {
    /// Owns the map's fd (the mappings stay valid after it closes, but epoll needs it).
    map: MapData,
    consumer: Mapping,
    producer: Mapping,
    /// Where the data pages start in `producer`.
    page: usize,
    /// Data bytes (a power of two).
    size: usize,
    /// The consumer position as read so far; published at most every `size / 8` bytes.
    pos: usize,
}

impl Ring {
    /// Maps `map` (a `BPF_MAP_TYPE_RINGBUF` of `size` data bytes).
    pub fn new(map: MapData, size: u32) -> std::io::Result<Self> {
        let size = size as usize;
        assert!(size.is_power_of_two(), "the kernel only creates rings of a power of two bytes");
        let page = page_size();
        let fd = map.fd().as_fd();
        let consumer = Mapping::new(fd, 0, page, libc::PROT_READ | libc::PROT_WRITE)?;
        let producer = Mapping::new(fd, page, page + 2 * size, libc::PROT_READ)?;
        let pos = consumer.position().load(Ordering::Acquire);
        Ok(Self { map, consumer, producer, page, size, pos })
    }

    /// Calls `record` with each record's bytes (8-byte aligned) until the ring is empty or
    /// the next record is still being written; returns the bytes consumed.
    pub fn drain(&mut self, mut record: impl FnMut(&[u8])) -> usize {
        let Self { consumer, producer, page, size, pos, .. } = self;
        let (start, mut published) = (*pos, *pos);
        let data = producer.at(*page);
        'drain: loop {
            let end = producer.position().load(Ordering::Relaxed);
            fence(Ordering::Acquire);
            if *pos == end {
                break;
            }
            while *pos != end {
                let at = *pos & (*size - 1);
                // SAFETY: `at` is 8-aligned and below the ring's size, inside the first
                // mapping of the data pages; the kernel writes the header atomically.
                let header = unsafe { &*data.add(at).cast::<AtomicU32>() };
                let len = header.load(Ordering::Relaxed);
                fence(Ordering::Acquire);
                if len & BUSY != 0 {
                    break 'drain;
                }
                let bytes = (len & !(BUSY | DISCARD)) as usize;
                // The kernel reserves at most the ring's size, so a record ends within the
                // second mapping of the data pages.
                assert!(HEADER + bytes <= *size, "ring record of {bytes} bytes");
                if len & DISCARD == 0 {
                    // SAFETY: in bounds (above); complete and not reused until the consumer
                    // position passes it.
                    record(unsafe { std::slice::from_raw_parts(data.add(at + HEADER), bytes) });
                }
                *pos = pos.wrapping_add((HEADER + bytes).next_multiple_of(8));
                if pos.wrapping_sub(published) >= *size / 8 {
                    consumer.position().store(*pos, Ordering::Release);
                    published = *pos;
                }
            }
        }
        consumer.position().store(*pos, Ordering::Release);
        pos.wrapping_sub(start)
    }
}

impl AsFd for Ring {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.map.fd().as_fd()
    }
}

impl AsRawFd for Ring {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

/// A shared mapping of part of the ring buffer's fd, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; `Ring` reads it through atomics and shared
// slices, and writes only the consumer position, through an atomic.
unsafe impl Send for Mapping {}

impl Mapping {
    fn new(fd: BorrowedFd<'_>, offset: usize, len: usize, prot: libc::c_int) -> std::io::Result<Self> {
        // SAFETY: a new mapping at an address of the kernel's choosing; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { ptr: NonNull::new(ptr.cast()).expect("mmap succeeded"), len })
    }

    /// The position word at the start of the mapping (page-aligned).
    fn position(&self) -> &AtomicUsize {
        // SAFETY: the mapping is page-aligned and at least a page long.
        unsafe { self.ptr.cast::<AtomicUsize>().as_ref() }
    }

    fn at(&self, offset: usize) -> *const u8 {
        assert!(offset < self.len);
        // SAFETY: in bounds (checked).
        unsafe { self.ptr.as_ptr().add(offset) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped; no reference outlives `self`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
