//! Config parsing and validation (both stages): any text gives a Config or
//! a ConfigError, never a panic. Model files are not opened here.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = reflexd::Config::from_toml(text, std::path::Path::new("/nonexistent"));
    }
});
