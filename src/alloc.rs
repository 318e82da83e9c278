//! The process's allocator: mimalloc, asked for alignment only when a layout needs more than
//! any block has.
//!
//! The `mimalloc` crate's `GlobalAlloc` passes every layout to `mi_malloc_aligned`. In
//! mimalloc 3 that call takes its fast path only for blocks up to 1 KiB whose free block
//! happens to be aligned; a larger block (a `Vec` of a few hundred entries, a task, an
//! instance's context) goes to the generic path, which over-allocates by the alignment and
//! hands out an interior pointer unless the block size is a power of two. wasmtime makes about
//! twenty such allocations to instantiate a component, on every request. Every mimalloc
//! block is aligned to a machine word, so a layout that asks for no more than that is a plain
//! `mi_malloc`; a 16-byte alignment is a plain `mi_malloc` when the block it returns is
//! aligned (blocks whose size is a multiple of 16 are), and the aligned call otherwise.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys::{
    mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned, mi_zalloc,
    mi_zalloc_aligned,
};

/// The alignment of every block mimalloc hands out.
const WORD: usize = std::mem::size_of::<usize>();

/// The largest alignment tried with a plain allocation first.
const TRY_PLAIN: usize = 16;

/// mimalloc as the global allocator (see the module's documentation).
pub struct Allocator;

#[inline]
fn aligned(p: *mut c_void, align: usize) -> bool {
    (p as usize) & (align - 1) == 0
}

/// A block of `size` bytes aligned to `align`: from `plain` when mimalloc's own alignment is
/// enough (or happens to be), else from `with_alignment`.
#[inline(always)]
unsafe fn block(
    size: usize,
    align: usize,
    plain: unsafe extern "C" fn(usize) -> *mut c_void,
    with_alignment: unsafe extern "C" fn(usize, usize) -> *mut c_void,
) -> *mut u8 {
    unsafe {
        if align <= WORD {
            return plain(size).cast();
        }
        if align <= TRY_PLAIN {
            let p = plain(size);
            if aligned(p, align) {
                return p.cast();
            }
            mi_free(p);
        }
        with_alignment(size, align).cast()
    }
}

unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { block(layout.size(), layout.align(), mi_malloc, mi_malloc_aligned) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe { block(layout.size(), layout.align(), mi_zalloc, mi_zalloc_aligned) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        unsafe { mi_free(ptr.cast()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        unsafe {
            if align <= WORD {
                return mi_realloc(ptr.cast(), new_size).cast();
            }
            if align <= TRY_PLAIN {
                let p = mi_realloc(ptr.cast(), new_size);
                if p.is_null() || aligned(p, align) {
                    return p.cast();
                }
                // The contents moved to a block that is not aligned enough: move them once
                // more, to one that is.
                let q = mi_malloc_aligned(new_size, align);
                if !q.is_null() {
                    std::ptr::copy_nonoverlapping(p.cast::<u8>(), q.cast::<u8>(), new_size);
                }
                mi_free(p);
                return q.cast();
            }
            mi_realloc_aligned(ptr.cast(), new_size, align).cast()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size up to a few KiB, at every alignment up to a page: each block is aligned as
    /// asked, holds what was written to it, and keeps it across a reallocation.
    #[test]
    fn every_block_is_aligned_as_its_layout_asks() {
        let a = Allocator;
        let mut blocks = Vec::new();
        for align in [1usize, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in (1..=4200).step_by(7) {
                let layout = Layout::from_size_align(size, align).unwrap();
                for zeroed in [false, true] {
                    let p = unsafe {
                        if zeroed {
                            a.alloc_zeroed(layout)
                        } else {
                            a.alloc(layout)
                        }
                    };
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    if zeroed {
                        let s = unsafe { std::slice::from_raw_parts(p, size) };
                        assert!(s.iter().all(|&b| b == 0), "size {size} align {align}");
                    }
                    unsafe { std::ptr::write_bytes(p, (size % 251) as u8, size) };
                    blocks.push((p, layout));
                }
            }
        }
        for (p, layout) in blocks {
            let grown = layout.size() * 3 / 2 + 5;
            let q = unsafe { a.realloc(p, layout, grown) };
            assert!(!q.is_null());
            assert_eq!(q as usize % layout.align(), 0, "{layout:?} grown");
            let s = unsafe { std::slice::from_raw_parts(q, layout.size()) };
            assert!(
                s.iter().all(|&b| b == (layout.size() % 251) as u8),
                "{layout:?} grown"
            );
            unsafe { a.dealloc(q, Layout::from_size_align(grown, layout.align()).unwrap()) };
        }
    }
}
