//! A global allocator that measures, per thread, the most bytes live at once inside a window,
//! so that `envelope_decode` can bound what decoding untrusted bytes allocates.
//!
//! Install it in the binary that runs the target (`#[global_allocator] static A: Tracking =
//! Tracking;`); [`installed`] tells whether it is.

#![allow(unsafe_code)] // `GlobalAlloc` is an unsafe trait; the impl forwards to `System`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The tracking allocator: [`System`] plus per-thread accounting while a window is open.
#[derive(Debug, Clone, Copy)]
pub struct Tracking;

#[derive(Clone, Copy)]
struct Window {
    open: bool,
    live: isize,
    peak: isize,
}

thread_local! {
    // Const-initialised and without a destructor: reading it never allocates.
    static WINDOW: Cell<Window> = const { Cell::new(Window { open: false, live: 0, peak: 0 }) };
}

fn account(delta: isize) {
    let _ = WINDOW.try_with(|w| {
        let mut now = w.get();
        if now.open {
            now.live += delta;
            now.peak = now.peak.max(now.live);
            w.set(now);
        }
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// accounting touches only a thread-local `Cell` and never allocates.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            account(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            account(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) };
        account(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            account(new_size as isize - layout.size() as isize);
        }
        p
    }
}

/// Runs `f` and returns its result with the most bytes that were live at once on this thread
/// during it, beyond what was live when it started.
pub fn peak_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
    WINDOW.with(|w| {
        w.set(Window {
            open: true,
            live: 0,
            peak: 0,
        })
    });
    let r = f();
    let peak = WINDOW.with(|w| {
        let now = w.get();
        w.set(Window { open: false, ..now });
        now.peak
    });
    (r, peak.max(0) as usize)
}

/// Whether [`Tracking`] is this program's global allocator.
pub fn installed() -> bool {
    let ((), peak) = peak_during(|| {
        let b = std::hint::black_box(vec![0u8; 4096]);
        drop(b);
    });
    peak >= 4096
}
