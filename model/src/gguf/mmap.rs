//! A read-only view of a whole file: memory-mapped on unix (the weights are paged in as
//! they are dequantised, never copied as a whole), read into memory elsewhere.

use std::fs::File;
use std::io;

/// The bytes of a file, valid for the lifetime of the value.
pub(crate) struct FileBytes {
    #[cfg(unix)]
    map: Option<Mapping>,
    #[cfg(not(unix))]
    bytes: Vec<u8>,
}

impl FileBytes {
    /// Maps (or reads) all of `file`.
    pub(crate) fn new(file: &File) -> io::Result<Self> {
        #[cfg(unix)]
        {
            let len = usize::try_from(file.metadata()?.len())
                .map_err(|_| io::Error::other("file too large to map"))?;
            // mmap rejects a zero length; an empty file simply has no bytes.
            let map = if len == 0 {
                None
            } else {
                Some(Mapping::new(file, len)?)
            };
            Ok(FileBytes { map })
        }
        #[cfg(not(unix))]
        {
            use std::io::Read;
            let mut bytes = Vec::new();
            (&*file).read_to_end(&mut bytes)?;
            Ok(FileBytes { bytes })
        }
    }

    /// All bytes of the file.
    pub(crate) fn as_slice(&self) -> &[u8] {
        #[cfg(unix)]
        {
            self.map.as_ref().map_or(&[], Mapping::as_slice)
        }
        #[cfg(not(unix))]
        {
            &self.bytes
        }
    }
}

/// A private read-only mapping of a file, unmapped on drop.
#[cfg(unix)]
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

// The mapping is read-only and owned by this value; sharing `&[u8]` across threads is sound.
#[cfg(unix)]
unsafe impl Send for Mapping {}
#[cfg(unix)]
unsafe impl Sync for Mapping {}

#[cfg(unix)]
impl Mapping {
    fn new(file: &File, len: usize) -> io::Result<Self> {
        use std::os::unix::io::AsRawFd;
        // SAFETY: a fresh PROT_READ/MAP_PRIVATE mapping of an open descriptor; the result is
        // checked against MAP_FAILED. Like every mmap reader, this assumes nobody truncates
        // the file while it is mapped.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { ptr, len })
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to `len` readable bytes for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

#[cfg(unix)]
impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the region mapped in `new`, once.
        unsafe {
            libc::munmap(self.ptr, self.len);
        }
    }
}
