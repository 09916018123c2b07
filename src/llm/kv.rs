//! The KV cache, in place: per layer one key and one value buffer of
//! `[rows, kv_heads, cap, head_dim]` f32, allocated once at the length a
//! generation can reach (prompt + `max_tokens`, or the widest member of a
//! decode batch) and bound as both `past_key_values.*` and `present.*`.
//! GroupQueryAttention reads each row's valid length from the attention
//! mask and writes the new keys/values right after it, in this memory, so
//! a step neither allocates nor copies the cache: its cost no longer grows
//! with the square of the length. Rows are copied only when a generation
//! starts from a cached prefix or joins or leaves a decode batch.

use std::ffi::CString;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::bind::{Binding, Buf};

/// Every cache gets a distinct identity, so a binding can tell whether the
/// memory it points at is still the memory it should (a new cache may be
/// allocated at a freed one's address).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Names of the KV inputs and outputs, as C strings for binding.
pub struct KvNames {
    pub past: Vec<CString>,
    pub present: Vec<CString>,
}

impl KvNames {
    pub fn new(layers: usize) -> KvNames {
        let c = |s: String| CString::new(s).expect("no NUL in a generated name");
        let mut past = Vec::with_capacity(2 * layers);
        let mut present = Vec::with_capacity(2 * layers);
        for i in 0..layers {
            for kv in ["key", "value"] {
                past.push(c(format!("past_key_values.{i}.{kv}")));
                present.push(c(format!("present.{i}.{kv}")));
            }
        }
        KvNames { past, present }
    }
}

/// Shape of a model's cache: layers, key/value heads, head size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvShape {
    pub layers: usize,
    pub heads: usize,
    pub head_dim: usize,
}

impl KvShape {
    /// Bytes one position of one row takes over every layer.
    pub fn bytes_per_token(&self) -> usize {
        2 * self.layers * self.heads * self.head_dim * size_of::<f32>()
    }
}

/// A KV cache of `rows` sequences of up to `cap` positions.
pub struct KvCache {
    /// Key then value buffer per layer, in model input order.
    bufs: Vec<Buf<f32>>,
    pub shape: KvShape,
    pub rows: usize,
    pub cap: usize,
    id: u64,
}

impl KvCache {
    pub fn new(shape: KvShape, rows: usize, cap: usize) -> Result<KvCache, String> {
        let n = rows
            .checked_mul(shape.heads * cap * shape.head_dim)
            .ok_or("KV cache too large")?;
        let bufs = (0..2 * shape.layers)
            .map(|_| Buf::zeroed(n))
            .collect::<Result<_, _>>()?;
        Ok(KvCache {
            bufs,
            shape,
            rows,
            cap,
            id: NEXT_ID.fetch_add(1, Relaxed),
        })
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn bytes(&self) -> usize {
        self.rows * self.cap * self.shape.bytes_per_token()
    }

    /// Copies positions `0..len` of `src`'s row `src_row` into row `row`
    /// (the two caches may differ in capacity, not in shape).
    pub fn copy_row_from(
        &mut self,
        row: usize,
        src: &KvCache,
        src_row: usize,
        len: usize,
    ) -> Result<(), String> {
        self.check_copy(row, src, src_row, len)?;
        let (h, d) = (self.shape.heads, self.shape.head_dim);
        for (dst, s) in self.bufs.iter_mut().zip(&src.bufs) {
            let (dst, s) = (dst.as_mut_slice(), s.as_slice());
            for head in 0..h {
                let so = ((src_row * h + head) * src.cap) * d;
                let doff = ((row * h + head) * self.cap) * d;
                dst[doff..doff + len * d].copy_from_slice(&s[so..so + len * d]);
            }
        }
        Ok(())
    }

    fn check_copy(
        &self,
        row: usize,
        src: &KvCache,
        src_row: usize,
        len: usize,
    ) -> Result<(), String> {
        if src.shape != self.shape {
            return Err("KV caches of different models".into());
        }
        if row >= self.rows || src_row >= src.rows || len > self.cap || len > src.cap {
            return Err(format!(
                "KV copy out of range: row {row}/{} ← row {src_row}/{}, {len} positions (caps {} ← {})",
                self.rows, src.rows, self.cap, src.cap
            ));
        }
        Ok(())
    }

    /// Moves row `from`'s first `len` positions to row `to` (a member
    /// leaving a decode batch makes room by moving the last row).
    pub fn move_row(&mut self, to: usize, from: usize, len: usize) -> Result<(), String> {
        if to >= self.rows || from >= self.rows || len > self.cap {
            return Err(format!("KV row move out of range: {from} → {to}"));
        }
        if to == from {
            return Ok(());
        }
        let (h, d, cap) = (self.shape.heads, self.shape.head_dim, self.cap);
        for b in &mut self.bufs {
            let s = b.as_mut_slice();
            for head in 0..h {
                let so = ((from * h + head) * cap) * d;
                let doff = ((to * h + head) * cap) * d;
                s.copy_within(so..so + len * d, doff);
            }
        }
        Ok(())
    }

    /// Binds the first `rows` rows as `[rows, heads, cap, head_dim]` to
    /// both the past inputs and the present outputs: one buffer, read and
    /// written in place.
    ///
    /// # Safety
    /// The cache must stay alive and unmoved (its buffers do not move when
    /// the struct does) until the binding is pointed elsewhere.
    pub unsafe fn bind(&self, b: &mut Binding, names: &KvNames, rows: usize) -> Result<(), String> {
        if rows == 0 || rows > self.rows {
            return Err(format!("binding {rows} of {} KV rows", self.rows));
        }
        let shape = [
            rows as i64,
            self.shape.heads as i64,
            self.cap as i64,
            self.shape.head_dim as i64,
        ];
        for (i, buf) in self.bufs.iter().enumerate() {
            unsafe {
                b.input(&names.past[i], buf, 0, &shape)?;
                b.output(&names.present[i], buf, 0, &shape)?;
            }
        }
        Ok(())
    }

    /// The first `len` positions of row `row`, layer buffer `i` (tests).
    pub fn row_values(&self, i: usize, row: usize, len: usize) -> Vec<f32> {
        let (h, d) = (self.shape.heads, self.shape.head_dim);
        let s = self.bufs[i].as_slice();
        (0..h)
            .flat_map(|head| {
                let o = ((row * h + head) * self.cap) * d;
                s[o..o + len * d].iter().copied()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(rows: usize, cap: usize) -> KvCache {
        let shape = KvShape {
            layers: 2,
            heads: 3,
            head_dim: 4,
        };
        let mut kv = KvCache::new(shape, rows, cap).unwrap();
        for (bi, b) in kv.bufs.iter_mut().enumerate() {
            for (i, x) in b.as_mut_slice().iter_mut().enumerate() {
                *x = (bi * 100_000 + i) as f32;
            }
        }
        kv
    }

    #[test]
    fn rows_copy_between_capacities_and_move_within() {
        let src = filled(2, 5);
        let mut dst = KvCache::new(src.shape, 3, 9).unwrap();
        dst.copy_row_from(2, &src, 1, 4).unwrap();
        for i in 0..4 {
            assert_eq!(dst.row_values(i, 2, 4), src.row_values(i, 1, 4));
        }
        dst.move_row(0, 2, 4).unwrap();
        assert_eq!(dst.row_values(3, 0, 4), src.row_values(3, 1, 4));
        assert!(
            dst.copy_row_from(3, &src, 0, 4).is_err(),
            "row out of range"
        );
        assert!(
            dst.copy_row_from(0, &src, 0, 6).is_err(),
            "longer than the source"
        );
        assert_ne!(src.id(), dst.id());
    }
}
