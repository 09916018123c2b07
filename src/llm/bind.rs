//! The decode loop's door into ONNX Runtime: an `OrtIoBinding` whose inputs
//! and outputs are views of memory this crate owns (the KV cache, the
//! ids/mask/positions buffers, the logits buffer). Binding a view never
//! copies: the runtime reads and writes that memory in place, which is what
//! lets GroupQueryAttention use one buffer as both `past_key_values.*` and
//! `present.*` (the in-place KV cache) and what keeps a step free of
//! allocations for its inputs and outputs. `ort`'s safe `IoBinding` clones
//! borrowed inputs and only binds outputs it allocated itself, so this
//! module talks to the C API (`ort::api()`) directly, in a few small
//! `unsafe` functions whose contract is stated once: the memory behind a
//! bound view must stay valid and unmoved until it is rebound or the
//! binding is dropped ([`Binding`]'s owner keeps that promise).

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ffi::{CStr, c_void};
use std::ptr::{self, NonNull};

use ort::AsPointer;
use ort::memory::MemoryInfo;
use ort::session::Session;
use ort::sys as ffi;
use ort::value::TensorElementType;

fn check(status: ffi::OrtStatusPtr) -> Result<(), String> {
    if status.0.is_null() {
        return Ok(());
    }
    let api = ort::api();
    // SAFETY: a non-null status from the API holds a NUL-terminated message
    // until it is released, which happens right after the copy.
    let msg = unsafe { CStr::from_ptr((api.GetErrorMessage)(status.0)) }
        .to_string_lossy()
        .into_owned();
    unsafe { (api.ReleaseStatus)(status.0) };
    Err(msg)
}

/// Element types the loop binds.
pub trait Elem: Copy + Default + 'static {
    const TYPE: TensorElementType;
}

impl Elem for f32 {
    const TYPE: TensorElementType = TensorElementType::Float32;
}

impl Elem for i64 {
    const TYPE: TensorElementType = TensorElementType::Int64;
}

/// Zeroed, 64-byte aligned memory that never moves or grows: KV rows,
/// logits and input buffers live here so a bound view stays valid.
pub struct Buf<T: Elem> {
    ptr: NonNull<T>,
    len: usize,
}

// SAFETY: `Buf` owns its allocation exclusively, like a `Box<[T]>`.
unsafe impl<T: Elem + Send> Send for Buf<T> {}
unsafe impl<T: Elem + Sync> Sync for Buf<T> {}

const ALIGN: usize = 64;

impl<T: Elem> Buf<T> {
    /// `len` zeroed elements (all-zero bits are 0 for f32 and i64).
    pub fn zeroed(len: usize) -> Result<Buf<T>, String> {
        if len == 0 {
            return Ok(Buf {
                ptr: NonNull::dangling(),
                len: 0,
            });
        }
        let layout = Self::layout(len)?;
        // SAFETY: layout has a non-zero size.
        let p = unsafe { alloc_zeroed(layout) }.cast::<T>();
        let ptr = NonNull::new(p).ok_or_else(|| {
            format!(
                "cannot allocate {} MiB for the KV cache",
                layout.size() >> 20
            )
        })?;
        Ok(Buf { ptr, len })
    }

    fn layout(len: usize) -> Result<Layout, String> {
        len.checked_mul(size_of::<T>())
            .and_then(|n| Layout::from_size_align(n, ALIGN).ok())
            .ok_or_else(|| format!("buffer of {len} elements is too large"))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[T] {
        // SAFETY: `ptr` holds `len` initialised elements (zeroed at birth).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as above, and `&mut self` is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    fn as_ptr(&self) -> *mut T {
        self.ptr.as_ptr()
    }
}

impl<T: Elem> Drop for Buf<T> {
    fn drop(&mut self) {
        if self.len > 0 {
            let layout = Self::layout(self.len).expect("layout was valid at allocation");
            // SAFETY: allocated in `zeroed` with this layout.
            unsafe { dealloc(self.ptr.as_ptr().cast(), layout) };
        }
    }
}

/// A tensor header over memory owned elsewhere; released after binding
/// (the binding holds its own reference to the header, not to the data).
struct View(NonNull<ffi::OrtValue>);

impl View {
    /// # Safety
    /// `data` must point to at least `shape.product()` elements of `T`.
    unsafe fn new<T: Elem>(mem: &MemoryInfo, data: *mut T, shape: &[i64]) -> Result<View, String> {
        let n: i64 = shape.iter().product();
        let mut out: *mut ffi::OrtValue = ptr::null_mut();
        let api = ort::api();
        check(unsafe {
            (api.CreateTensorWithDataAsOrtValue)(
                mem.ptr(),
                data.cast::<c_void>(),
                n.max(0) as usize * size_of::<T>(),
                shape.as_ptr(),
                shape.len(),
                T::TYPE.into(),
                &mut out,
            )
        })?;
        NonNull::new(out)
            .map(View)
            .ok_or_else(|| "onnxruntime returned no tensor".to_string())
    }
}

impl Drop for View {
    fn drop(&mut self) {
        // SAFETY: created by CreateTensorWithDataAsOrtValue, released once.
        unsafe { (ort::api().ReleaseValue)(self.0.as_ptr()) };
    }
}

/// An `OrtIoBinding` of one session whose inputs and outputs are views of
/// [`Buf`]s. Whoever owns the binding also owns (or outlives) every bound
/// buffer and rebinds before reusing a name for other memory.
pub struct Binding {
    ptr: NonNull<ffi::OrtIoBinding>,
    mem: MemoryInfo<'static>,
}

// SAFETY: the binding is only used with `&mut self` (one thread at a time),
// as `ort::session::IoBinding` is.
unsafe impl Send for Binding {}

impl Binding {
    pub fn new(session: &Session) -> Result<Binding, String> {
        let mut out: *mut ffi::OrtIoBinding = ptr::null_mut();
        check(unsafe { (ort::api().CreateIoBinding)(session.ptr().cast_mut(), &mut out) })?;
        Ok(Binding {
            ptr: NonNull::new(out).ok_or("onnxruntime returned no binding")?,
            mem: MemoryInfo::default(),
        })
    }

    /// Binds input `name` to `shape` elements of `buf` starting at `offset`.
    ///
    /// # Safety
    /// `buf` must stay alive and unmoved until `name` is rebound or the
    /// binding dropped.
    pub unsafe fn input<T: Elem>(
        &mut self,
        name: &CStr,
        buf: &Buf<T>,
        offset: usize,
        shape: &[i64],
    ) -> Result<(), String> {
        let v = self.view(buf, offset, shape)?;
        check(unsafe { (ort::api().BindInput)(self.ptr.as_ptr(), name.as_ptr(), v.0.as_ptr()) })
    }

    /// Binds output `name`: the run writes `shape` elements into `buf` at
    /// `offset`.
    ///
    /// # Safety
    /// As [`Binding::input`]; the runtime writes through this view, so no
    /// reference into that part of `buf` may be live during a run.
    pub unsafe fn output<T: Elem>(
        &mut self,
        name: &CStr,
        buf: &Buf<T>,
        offset: usize,
        shape: &[i64],
    ) -> Result<(), String> {
        let v = self.view(buf, offset, shape)?;
        check(unsafe { (ort::api().BindOutput)(self.ptr.as_ptr(), name.as_ptr(), v.0.as_ptr()) })
    }

    fn view<T: Elem>(&self, buf: &Buf<T>, offset: usize, shape: &[i64]) -> Result<View, String> {
        let n = shape
            .iter()
            .try_fold(1usize, |a, &d| {
                usize::try_from(d).ok().and_then(|d| a.checked_mul(d))
            })
            .ok_or_else(|| format!("bad shape {shape:?}"))?;
        if offset.checked_add(n).is_none_or(|end| end > buf.len()) {
            return Err(format!(
                "view of {n} elements at {offset} exceeds a buffer of {}",
                buf.len()
            ));
        }
        // SAFETY: bounds checked above.
        unsafe { View::new(&self.mem, buf.as_ptr().add(offset), shape) }
    }

    /// Runs the session on the bound values.
    pub fn run(&mut self, session: &mut Session) -> Result<(), String> {
        check(unsafe {
            (ort::api().RunWithBinding)(session.ptr().cast_mut(), ptr::null(), self.ptr.as_ptr())
        })
    }
}

impl Drop for Binding {
    fn drop(&mut self) {
        // SAFETY: created by CreateIoBinding, released once.
        unsafe { (ort::api().ReleaseIoBinding)(self.ptr.as_ptr()) };
    }
}
