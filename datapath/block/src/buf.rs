//! [`IoBuf`]: the owned, zero-initialised, page-aligned byte buffer that carries data through
//! the block layer.
//!
//! The buffer is aligned to [`IoBuf::ALIGN`] (4096) bytes so it can be handed directly to
//! `O_DIRECT` reads and writes and to io_uring. It owns its allocation like a `Box<[u8]>`: moving
//! an `IoBuf` moves ownership but never moves the bytes, so a backend can move the buffer into an
//! in-flight request (for example to an io_uring thread) and the memory the kernel writes into
//! stays valid until the request hands the buffer back.

use std::alloc::{self, Layout};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// An owned, zero-initialised byte buffer whose start is aligned to [`IoBuf::ALIGN`] bytes.
pub struct IoBuf {
    /// Start of the allocation; for `cap == 0` an aligned dangling pointer that is never
    /// dereferenced or freed.
    ptr: NonNull<u8>,
    /// Number of initialised bytes exposed through `Deref` (always `<= cap`).
    len: usize,
    /// Size of the allocation in bytes (the layout size used to free it).
    cap: usize,
}

// SAFETY: `IoBuf` uniquely owns its allocation (exactly like `Box<[u8]>`); no other handle to
// the memory exists, so transferring the owner to another thread is sound.
unsafe impl Send for IoBuf {}
// SAFETY: shared references only permit reads of the bytes (`&[u8]`), and mutation requires
// `&mut IoBuf`, so sharing `&IoBuf` across threads is as sound as sharing `&[u8]`.
unsafe impl Sync for IoBuf {}

impl IoBuf {
    /// Alignment of the buffer start in bytes: enough for `O_DIRECT` on any device with logical
    /// blocks of up to 4 KiB, and for io_uring.
    pub const ALIGN: usize = 4096;

    /// A new buffer of `len` zero bytes. `len == 0` allocates nothing.
    ///
    /// Aborts via [`std::alloc::handle_alloc_error`] if memory cannot be allocated, like `Vec`.
    pub fn zeroed(len: usize) -> IoBuf {
        if len == 0 {
            return IoBuf {
                ptr: Self::dangling(),
                len: 0,
                cap: 0,
            };
        }
        let layout = Self::layout(len);
        // SAFETY: `layout` has a non-zero size (len > 0) and a valid power-of-two alignment.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        IoBuf { ptr, len, cap: len }
    }

    /// A new aligned buffer holding a copy of `data`.
    pub fn from_slice(data: &[u8]) -> IoBuf {
        let mut buf = IoBuf::zeroed(data.len());
        buf.copy_from_slice(data);
        buf
    }

    /// Number of bytes in the buffer.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Pointer to the first byte; aligned to [`IoBuf::ALIGN`] (also when empty).
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// Mutable pointer to the first byte; aligned to [`IoBuf::ALIGN`] (also when empty).
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Shortens the buffer to `len` bytes; does nothing if `len >= self.len()`. The memory is
    /// kept (and freed with the buffer).
    pub fn truncate(&mut self, len: usize) {
        if len < self.len {
            self.len = len;
        }
    }

    fn layout(size: usize) -> Layout {
        match Layout::from_size_align(size, Self::ALIGN) {
            Ok(layout) => layout,
            // Only sizes within ALIGN of isize::MAX fail; no allocation could satisfy them.
            Err(_) => panic!("IoBuf of {size} bytes exceeds the maximum allocation size"),
        }
    }

    fn dangling() -> NonNull<u8> {
        // An aligned, non-null address with no provenance: valid for zero-length slices.
        let p = std::ptr::without_provenance_mut::<u8>(Self::ALIGN);
        // SAFETY: `ALIGN` is non-zero, so the pointer is non-null.
        unsafe { NonNull::new_unchecked(p) }
    }
}

impl Drop for IoBuf {
    fn drop(&mut self) {
        if self.cap != 0 {
            // SAFETY: `ptr` was returned by `alloc_zeroed` with exactly this layout (size `cap`,
            // align `ALIGN`) and has not been freed; `cap` never changes after allocation.
            unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.cap)) }
        }
    }
}

impl Deref for IoBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for reads of `len <= cap` initialised (zeroed at allocation)
        // bytes for as long as `self` is borrowed; for `len == 0` it is non-null and aligned.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for IoBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` guarantees the access is unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl AsRef<[u8]> for IoBuf {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl AsMut<[u8]> for IoBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        self
    }
}

impl Clone for IoBuf {
    fn clone(&self) -> IoBuf {
        IoBuf::from_slice(self)
    }
}

impl Default for IoBuf {
    fn default() -> IoBuf {
        IoBuf::zeroed(0)
    }
}

impl PartialEq for IoBuf {
    fn eq(&self, other: &IoBuf) -> bool {
        self[..] == other[..]
    }
}

impl Eq for IoBuf {}

impl PartialEq<[u8]> for IoBuf {
    fn eq(&self, other: &[u8]) -> bool {
        self[..] == *other
    }
}

impl From<&[u8]> for IoBuf {
    fn from(data: &[u8]) -> IoBuf {
        IoBuf::from_slice(data)
    }
}

impl fmt::Debug for IoBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoBuf")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn is_send_and_sync() {
        assert_send_sync::<IoBuf>();
    }

    #[test]
    fn aligned_and_zeroed_for_many_sizes() {
        for len in [0usize, 1, 511, 512, 4095, 4096, 4097, 65536, 1 << 20] {
            let buf = IoBuf::zeroed(len);
            assert_eq!(buf.len(), len);
            assert_eq!(buf.is_empty(), len == 0);
            assert_eq!(buf.as_ptr() as usize % IoBuf::ALIGN, 0, "len {len}");
            assert!(buf.iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn empty_buffer_works() {
        let mut buf = IoBuf::zeroed(0);
        assert!(buf.is_empty());
        assert_eq!(&buf[..], &[] as &[u8]);
        assert_eq!(buf.as_mut_ptr() as usize % IoBuf::ALIGN, 0);
        let c = buf.clone();
        assert_eq!(c, buf);
        assert_eq!(IoBuf::from_slice(&[]), IoBuf::default());
    }

    #[test]
    fn from_slice_clone_eq_truncate() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut buf = IoBuf::from_slice(&data);
        assert_eq!(&buf[..], &data[..]);
        let clone = buf.clone();
        assert_eq!(clone, buf);
        assert_ne!(clone.as_ptr(), buf.as_ptr());
        assert_eq!(clone.as_ptr() as usize % IoBuf::ALIGN, 0);
        buf[0] ^= 0xff;
        assert_ne!(clone, buf);
        buf.truncate(100);
        assert_eq!(buf.len(), 100);
        assert_eq!(&buf[1..], &data[1..100]);
        buf.truncate(1000); // growing is a no-op
        assert_eq!(buf.len(), 100);
        buf.truncate(0);
        assert!(buf.is_empty());
    }

    #[test]
    fn debug_does_not_dump_contents() {
        let buf = IoBuf::from_slice(&[0xab; 64]);
        let s = format!("{buf:?}");
        assert!(s.contains("len: 64"), "{s}");
        assert!(!s.contains("171"), "{s}");
    }

    #[test]
    fn can_be_filled_on_another_thread() {
        let buf = IoBuf::zeroed(8192);
        let ptr = buf.as_ptr() as usize;
        let buf = std::thread::spawn(move || {
            let mut buf = buf;
            buf.fill(7);
            buf
        })
        .join()
        .unwrap();
        assert_eq!(buf.as_ptr() as usize, ptr, "moving must not move the bytes");
        assert!(buf.iter().all(|&b| b == 7));
    }
}
