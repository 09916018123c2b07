//! Generation command parsing (JSON on a generation pipeline's command topic)
//! and the id salvage used for error replies. Accepted commands must respect
//! every bound.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use reflexd::wire::command::{self, CommandLimits};

fuzz_target!(|data: &[u8]| {
    let limits = CommandLimits {
        max_tokens: 512,
        default_max_tokens: 128,
        max_prompt_chars: 1000,
        max_messages: 64,
        default_deadline: Duration::from_secs(30),
    };
    if let Ok(c) = command::parse(data, &limits) {
        assert!(command::valid_id(&c.id));
        assert!((1..=512).contains(&c.max_tokens));
        let chars: usize = c.messages.iter().map(|m| m.content.chars().count()).sum();
        assert!(chars <= 1000);
        assert!(c.stop.len() <= command::MAX_STOPS);
    }
    if let Some(id) = command::salvage_id(data) {
        assert!(id.len() <= command::MAX_GEN_ID_LEN);
    }
});
