//! The allocator every part of the daemon allocates through, and its settings, read once
//! when it starts. A leaf: it knows nothing of what is allocated.

/// jemalloc rather than glibc's malloc. After a burst of thousands of files the store's
/// records, which live on, sit scattered among the freed buffers of uploads and field values.
/// glibc can give back only whole free pages, and kept most of the peak: 52 MiB resident
/// after 20,000 files with 18 MiB in use. jemalloc keeps blocks of one size together and gives
/// back each page that empties.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, which it reads from this symbol (its own name for `malloc_conf`)
/// when it starts:
/// - one arena: the daemon waits on the network and the disk, and a second arena would hold
///   its own share of freed memory;
/// - no per-thread caches: the runtime's blocking pool runs a hundred threads or more during
///   a large scan, and each cache would keep blocks its thread freed;
/// - freed pages go back to the system at once, instead of after 10 s of further allocation,
///   which an idle daemon never makes.
#[export_name = "_rjem_malloc_conf"]
pub static SETTINGS: Settings =
    Settings(c"narenas:1,tcache:false,dirty_decay_ms:0,muzzy_decay_ms:0".as_ptr());

/// A C string as jemalloc reads `malloc_conf`: one pointer.
#[repr(transparent)]
pub struct Settings(*const std::ffi::c_char);

// SAFETY: the pointer is to a constant string that nothing writes.
unsafe impl Sync for Settings {}
