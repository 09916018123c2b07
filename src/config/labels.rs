//! Class names from a text file: one name per line, line `i` (from 0) names
//! class `i`. Blank lines at the end are ignored; a blank line in the middle
//! is an error (it would shift every later class).

use std::path::Path;

#[derive(thiserror::Error, Debug)]
pub enum LabelError {
    #[error("cannot read labels file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("labels file {path}: line {line} is blank (every class needs a name)")]
    Blank { path: String, line: usize },
    #[error("labels file {path} has no names")]
    Empty { path: String },
}

pub fn load_labels(path: &Path) -> Result<Vec<String>, LabelError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| LabelError::Read {
        path: shown.clone(),
        source,
    })?;
    parse_labels(&text, &shown)
}

/// Parses label text; `origin` names it in errors.
pub fn parse_labels(text: &str, origin: &str) -> Result<Vec<String>, LabelError> {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let used = lines
        .iter()
        .rposition(|l| !l.is_empty())
        .map_or(0, |i| i + 1);
    if used == 0 {
        return Err(LabelError::Empty {
            path: origin.to_string(),
        });
    }
    lines[..used]
        .iter()
        .enumerate()
        .map(|(i, l)| {
            if l.is_empty() {
                Err(LabelError::Blank {
                    path: origin.to_string(),
                    line: i + 1,
                })
            } else {
                Ok(l.to_string())
            }
        })
        .collect()
}
