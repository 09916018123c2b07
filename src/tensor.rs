//! Tensors as the daemon moves them between the wire and the runtime: an
//! element type, a shape and little-endian element bytes. A leaf of the
//! crate: codecs (`wire`), the scheduler's jobs and the inference stage all
//! speak it, and it knows none of them. The bytes are a [`Bytes`] so a
//! decoded message can point into the received zenoh payload instead of
//! copying it; the one copy on the way in is into the runtime's own tensor.

use bytes::Bytes;

/// Element types the daemon moves between zenoh and ONNX Runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    F32,
    F64,
    F16,
    Bf16,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    Bool,
}

impl Dtype {
    pub const NAMES: [&'static str; 13] = [
        "f32", "f64", "f16", "bf16", "i8", "i16", "i32", "i64", "u8", "u16", "u32", "u64", "bool",
    ];
    pub const ALL: [Dtype; 13] = [
        Dtype::F32,
        Dtype::F64,
        Dtype::F16,
        Dtype::Bf16,
        Dtype::I8,
        Dtype::I16,
        Dtype::I32,
        Dtype::I64,
        Dtype::U8,
        Dtype::U16,
        Dtype::U32,
        Dtype::U64,
        Dtype::Bool,
    ];

    pub fn parse(s: &str) -> Option<Dtype> {
        Dtype::NAMES
            .iter()
            .position(|n| *n == s)
            .map(|i| Dtype::ALL[i])
    }

    pub fn name(self) -> &'static str {
        Dtype::NAMES[Dtype::ALL.iter().position(|d| *d == self).expect("in ALL")]
    }

    pub fn size(self) -> usize {
        match self {
            Dtype::F64 | Dtype::I64 | Dtype::U64 => 8,
            Dtype::F32 | Dtype::I32 | Dtype::U32 => 4,
            Dtype::F16 | Dtype::Bf16 | Dtype::I16 | Dtype::U16 => 2,
            Dtype::I8 | Dtype::U8 | Dtype::Bool => 1,
        }
    }

    /// Encodes config-supplied numbers; `None` when a value does not fit.
    pub fn encode_f64(self, values: &[f64]) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(values.len() * self.size());
        for &v in values {
            let int_ok = |lo: f64, hi: f64| v.fract() == 0.0 && v >= lo && v <= hi;
            match self {
                Dtype::F32 => out.extend_from_slice(&(v as f32).to_le_bytes()),
                Dtype::F64 => out.extend_from_slice(&v.to_le_bytes()),
                Dtype::I64 if int_ok(-9.007e15, 9.007e15) => {
                    out.extend_from_slice(&(v as i64).to_le_bytes())
                }
                Dtype::I32 if int_ok(i32::MIN as f64, i32::MAX as f64) => {
                    out.extend_from_slice(&(v as i32).to_le_bytes())
                }
                Dtype::U8 if int_ok(0.0, 255.0) => out.push(v as u8),
                Dtype::I8 if int_ok(-128.0, 127.0) => out.push(v as i8 as u8),
                Dtype::Bool if v == 0.0 || v == 1.0 => out.push(v as u8),
                _ => return None,
            }
        }
        Some(out)
    }
}

/// One named tensor: little-endian element bytes, possibly shared with the
/// message it was decoded from.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Bytes,
}

impl Tensor {
    pub fn new(
        name: impl Into<String>,
        dtype: Dtype,
        shape: Vec<usize>,
        data: impl Into<Bytes>,
    ) -> Tensor {
        Tensor {
            name: name.into(),
            dtype,
            shape,
            data: data.into(),
        }
    }

    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// Zero-filled tensor of `shape`.
    pub fn zeros(name: impl Into<String>, dtype: Dtype, shape: Vec<usize>) -> Tensor {
        let n = shape.iter().product::<usize>() * dtype.size();
        Tensor::new(name, dtype, shape, vec![0u8; n])
    }
}

/// A shape a model port declares (`-1` = dynamic) against a concrete one:
/// same rank, every fixed dimension equal, no zero dimension.
pub fn shape_fits(want: &[i64], got: &[usize]) -> bool {
    want.len() == got.len()
        && want
            .iter()
            .zip(got)
            .all(|(&w, &g)| g > 0 && (w < 0 || w as usize == g))
}

/// f32 convenience for building tensors.
pub fn f32_tensor(name: &str, shape: &[usize], values: &[f32]) -> Tensor {
    Tensor {
        name: name.to_string(),
        dtype: Dtype::F32,
        shape: shape.to_vec(),
        data: values
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>()
            .into(),
    }
}

/// Reads a little-endian f32 tensor's values.
pub fn f32_values(t: &Tensor) -> Option<Vec<f32>> {
    (t.dtype == Dtype::F32).then(|| {
        t.data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    })
}

/// Outer count, axis length and inner bytes of `t` around `axis`.
fn around(t: &Tensor, axis: usize) -> Result<(usize, usize, usize), String> {
    if axis >= t.shape.len() {
        return Err(format!(
            "tensor `{}` {:?} has no axis {axis}",
            t.name, t.shape
        ));
    }
    let outer: usize = t.shape[..axis].iter().product();
    let inner: usize = t.shape[axis + 1..].iter().product::<usize>() * t.dtype.size();
    Ok((outer, t.shape[axis], inner))
}

/// Concatenates tensors along `axis`; all other dimensions must agree.
pub fn concat(parts: &[&Tensor], axis: usize) -> Result<Tensor, String> {
    let first = parts.first().ok_or("nothing to concatenate")?;
    let mut shape = first.shape.clone();
    let mut total = 0;
    for t in parts {
        let same_rest = t.dtype == first.dtype
            && t.shape.len() == first.shape.len()
            && t.shape
                .iter()
                .zip(&first.shape)
                .enumerate()
                .all(|(i, (a, b))| i == axis || a == b);
        if !same_rest {
            return Err(format!(
                "tensor `{}`: cannot batch shape {:?} with {:?} along axis {axis}",
                t.name, t.shape, first.shape
            ));
        }
        total += around(t, axis)?.1;
    }
    let (outer, _, inner) = around(first, axis)?;
    shape[axis] = total;
    let mut data = Vec::with_capacity(outer * total * inner);
    for o in 0..outer {
        for t in parts {
            let (_, n, _) = around(t, axis)?;
            data.extend_from_slice(&t.data[o * n * inner..(o + 1) * n * inner]);
        }
    }
    Ok(Tensor::new(first.name.clone(), first.dtype, shape, data))
}

/// Splits `t` along `axis` into pieces of `counts` rows (their sum must be
/// the axis length).
pub fn split(t: &Tensor, axis: usize, counts: &[usize]) -> Result<Vec<Tensor>, String> {
    let (outer, n, inner) = around(t, axis)?;
    if counts.iter().sum::<usize>() != n {
        return Err(format!(
            "output `{}` has {n} rows along axis {axis}; the batch sent {}",
            t.name,
            counts.iter().sum::<usize>()
        ));
    }
    let mut out = Vec::with_capacity(counts.len());
    let mut start = 0;
    for &c in counts {
        let mut data = Vec::with_capacity(outer * c * inner);
        for o in 0..outer {
            let base = (o * n + start) * inner;
            data.extend_from_slice(&t.data[base..base + c * inner]);
        }
        let mut shape = t.shape.clone();
        shape[axis] = c;
        out.push(Tensor::new(t.name.clone(), t.dtype, shape, data));
        start += c;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concat_then_split_round_trips_on_a_middle_axis() {
        // Silero-like state [2,B,3]: B is axis 1.
        let a = f32_tensor("s", &[2, 1, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let b = f32_tensor(
            "s",
            &[2, 2, 3],
            &[
                7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0, 17.0, 18.0,
            ],
        );
        let c = concat(&[&a, &b], 1).unwrap();
        assert_eq!(c.shape, vec![2, 3, 3]);
        assert_eq!(
            f32_values(&c).unwrap(),
            vec![
                1.0, 2.0, 3.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 4.0, 5.0, 6.0, 13.0, 14.0, 15.0,
                16.0, 17.0, 18.0
            ]
        );
        let parts = split(&c, 1, &[1, 2]).unwrap();
        assert_eq!(parts[0], a);
        assert_eq!(parts[1], b);
    }

    #[test]
    fn mismatched_rest_dims_and_counts_are_errors() {
        let a = f32_tensor("x", &[1, 3], &[0.0; 3]);
        let b = f32_tensor("x", &[1, 4], &[0.0; 4]);
        assert!(concat(&[&a, &b], 0).is_err());
        assert!(split(&a, 0, &[2]).is_err());
    }
}
