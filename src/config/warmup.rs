//! Stage two of a tensor pipeline's `warmup` table: the shapes its inputs
//! with dynamic dimensions take in the warm-up runs before intake opens.
//! An entry is one shape (`x = [1, 3, 224, 224]`) or a range
//! (`x = { min = […], opt = […], max = […] }`). The range is also what the
//! TensorRT provider builds its optimisation profile for
//! (`crate::infer::profile`), so frames of any shape inside it run on the
//! engine built at start-up. Whether each key names a model input is known
//! only once the model is loaded (`crate::infer::spec`).

use std::collections::BTreeMap;

use super::common::At;
use super::{ConfigError, shape};

/// The shapes one input is warmed up with: `opt` always, `min` and `max`
/// too when they differ from it. Every dimension satisfies
/// `min <= opt <= max`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WarmupShape {
    pub min: Vec<usize>,
    pub opt: Vec<usize>,
    pub max: Vec<usize>,
}

impl WarmupShape {
    /// One shape: min, opt and max are the same.
    pub fn fixed(shape: Vec<usize>) -> Self {
        WarmupShape {
            min: shape.clone(),
            opt: shape.clone(),
            max: shape,
        }
    }

    /// Whether the entry gives a range rather than one shape.
    pub fn is_range(&self) -> bool {
        self.min != self.opt || self.max != self.opt
    }
}

const EXPECTED: &str = "expected a shape such as [1, 3, 224, 224] or a range { min = [...], opt = [...], max = [...] }";

/// Validates every entry of a pipeline's `warmup` table.
pub(super) fn warmup(
    at: &At,
    raw: &BTreeMap<String, toml::Value>,
) -> Result<BTreeMap<String, WarmupShape>, ConfigError> {
    raw.iter()
        .map(|(name, v)| Ok((name.clone(), entry(at, name, v)?)))
        .collect()
}

fn entry(at: &At, name: &str, v: &toml::Value) -> Result<WarmupShape, ConfigError> {
    let key = format!("warmup.{name}");
    match v {
        toml::Value::Array(_) => Ok(WarmupShape::fixed(dims(at, &key, v)?)),
        toml::Value::Table(t) => {
            if let Some(k) = t
                .keys()
                .find(|k| !["min", "opt", "max"].contains(&k.as_str()))
            {
                return Err(at.err(&format!("{key}.{k}"), format!("is not a key; {EXPECTED}")));
            }
            let get = |k: &str| -> Result<Option<Vec<usize>>, ConfigError> {
                t.get(k)
                    .map(|v| dims(at, &format!("{key}.{k}"), v))
                    .transpose()
            };
            let opt = get("opt")?
                .ok_or_else(|| at.err(&key, format!("a range needs opt; {EXPECTED}")))?;
            let min = get("min")?.unwrap_or_else(|| opt.clone());
            let max = get("max")?.unwrap_or_else(|| opt.clone());
            ordered(at, &key, WarmupShape { min, opt, max })
        }
        other => Err(at.err(&key, format!("= {other}: {EXPECTED}"))),
    }
}

fn dims(at: &At, key: &str, v: &toml::Value) -> Result<Vec<usize>, ConfigError> {
    let bad = || at.err(key, format!("= {v}: {EXPECTED}"));
    let items = v.as_array().ok_or_else(bad)?;
    let raw: Vec<i64> = items
        .iter()
        .map(|d| d.as_integer().ok_or_else(bad))
        .collect::<Result<_, _>>()?;
    shape(&at.key(key), &raw)
}

/// Same rank everywhere and `min <= opt <= max` in every dimension.
fn ordered(at: &At, key: &str, w: WarmupShape) -> Result<WarmupShape, ConfigError> {
    if w.min.len() != w.opt.len() || w.max.len() != w.opt.len() {
        return Err(at.err(
            key,
            format!(
                "min {:?}, opt {:?} and max {:?} must have the same number of dimensions",
                w.min, w.opt, w.max
            ),
        ));
    }
    let fits = (0..w.opt.len()).all(|i| w.min[i] <= w.opt[i] && w.opt[i] <= w.max[i]);
    if !fits {
        return Err(at.err(
            key,
            format!(
                "expected min <= opt <= max in every dimension; got min {:?}, opt {:?}, max {:?}",
                w.min, w.opt, w.max
            ),
        ));
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<BTreeMap<String, WarmupShape>, String> {
        let t: toml::Table = toml::from_str(text).unwrap();
        let raw: BTreeMap<String, toml::Value> = t.into_iter().collect();
        warmup(&At("p"), &raw).map_err(|e| e.to_string())
    }

    #[test]
    fn a_shape_is_min_opt_and_max() {
        let w = parse("x = [1, 3, 8, 8]").unwrap();
        assert_eq!(w["x"], WarmupShape::fixed(vec![1, 3, 8, 8]));
        assert!(!w["x"].is_range());
    }

    #[test]
    fn a_range_defaults_its_ends_to_opt() {
        let w = parse("x = { min = [1, 100], opt = [1, 400] }").unwrap();
        assert_eq!(w["x"].min, vec![1, 100]);
        assert_eq!(w["x"].max, vec![1, 400]);
        assert!(w["x"].is_range());
    }

    #[test]
    fn bad_entries_name_the_pipeline_and_key() {
        for (text, want) in [
            ("x = 3", "warmup.x = 3"),
            ("x = { min = [1] }", "a range needs opt"),
            ("x = { opt = [1], best = [2] }", "warmup.x.best"),
            ("x = { min = [2], opt = [1] }", "min <= opt <= max"),
            (
                "x = { opt = [1, 2], max = [3] }",
                "same number of dimensions",
            ),
            ("x = [1, 0]", "every dimension must be > 0"),
            ("x = [1, \"a\"]", "expected a shape"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains("pipeline \"p\""), "{text}: {e}");
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
