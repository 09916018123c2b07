//! Incremental detokenization: output decoding for streamed tokens. Byte-level
//! BPE tokens can end in the middle of a UTF-8 character (Korean syllables,
//! emoji), so text is emitted only once it decodes without a trailing
//! replacement character, and stop strings are held back until they can no
//! longer match. The concatenation of emitted pieces always equals the final
//! text.

/// Turns token ids into text pieces as they are generated.
pub struct Detokenizer {
    ids: Vec<u32>,
    /// Decoding restarts at `prefix` each step (a few tokens back, so the
    /// tokenizer's context-dependent cleanup still sees a left neighbour)
    /// and `read` marks what has been turned into text: each step costs a
    /// few tokens, not the whole sequence.
    prefix: usize,
    read: usize,
    /// Text already emitted.
    emitted: String,
    /// Decoded text not yet emitted because it may be the start of a stop
    /// string.
    held: String,
    stops: Vec<String>,
}

/// Outcome of pushing one token.
#[derive(Debug, PartialEq)]
pub struct Piece {
    /// Text safe to emit now (may be empty).
    pub text: String,
    /// A stop string was found; the text is cut before it.
    pub stopped: bool,
}

impl Detokenizer {
    pub fn new(stops: Vec<String>) -> Detokenizer {
        Detokenizer {
            ids: Vec::new(),
            prefix: 0,
            read: 0,
            emitted: String::new(),
            held: String::new(),
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
        }
    }

    /// Adds a token; `decode` turns a slice of ids into text.
    pub fn push(&mut self, id: u32, decode: impl Fn(&[u32]) -> String) -> Piece {
        self.ids.push(id);
        let before = decode(&self.ids[self.prefix..self.read]);
        let now = decode(&self.ids[self.prefix..]);
        // A trailing U+FFFD means the last token ended inside a character:
        // wait for the rest of it.
        if now.len() <= before.len()
            || now.ends_with('\u{FFFD}')
            || !now.is_char_boundary(before.len())
        {
            return Piece {
                text: String::new(),
                stopped: false,
            };
        }
        self.held.push_str(&now[before.len()..]);
        self.prefix = self.read;
        self.read = self.ids.len();
        for s in &self.stops {
            if let Some(pos) = self.held.find(s.as_str()) {
                let text = self.held[..pos].to_string();
                self.emitted.push_str(&text);
                self.held.clear();
                return Piece {
                    text,
                    stopped: true,
                };
            }
        }
        // Hold back the longest suffix that is a prefix of some stop string.
        let mut keep = 0;
        for s in &self.stops {
            for (i, _) in self.held.char_indices() {
                let suffix = &self.held[i..];
                if s.starts_with(suffix) {
                    keep = keep.max(suffix.len());
                    break;
                }
            }
        }
        let cut = self.held.len() - keep;
        let text: String = self.held[..cut].to_string();
        self.held.drain(..cut);
        self.emitted.push_str(&text);
        Piece {
            text,
            stopped: false,
        }
    }

    /// Releases held text at the end of generation (no stop string came).
    pub fn finish(&mut self) -> String {
        let t = std::mem::take(&mut self.held);
        self.emitted.push_str(&t);
        t
    }

    pub fn text(&self) -> &str {
        &self.emitted
    }

    /// Text produced elsewhere (fleet offload) and already streamed.
    pub fn add_emitted(&mut self, text: &str) {
        self.emitted.push_str(text);
    }

    /// Text produced elsewhere not streamed yet (released by `finish`).
    pub fn add_held(&mut self, text: &str) {
        self.held.push_str(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake byte-level vocabulary: token i is byte i; decoding is lossy
    /// UTF-8 like a real byte-level BPE decoder.
    fn decode(ids: &[u32]) -> String {
        String::from_utf8_lossy(&ids.iter().map(|&i| i as u8).collect::<Vec<_>>()).into_owned()
    }

    fn run(text: &str, stops: &[&str]) -> (Vec<String>, bool, String) {
        let mut d = Detokenizer::new(stops.iter().map(|s| s.to_string()).collect());
        let mut pieces = Vec::new();
        for b in text.bytes() {
            let p = d.push(b as u32, decode);
            if !p.text.is_empty() {
                pieces.push(p.text);
            }
            if p.stopped {
                return (pieces, true, d.text().to_string());
            }
        }
        let rest = d.finish();
        if !rest.is_empty() {
            pieces.push(rest);
        }
        (pieces, false, d.text().to_string())
    }

    #[test]
    fn multibyte_characters_are_never_split() {
        let text = "안녕하세요 🤖 robot";
        let (pieces, _, full) = run(text, &[]);
        assert_eq!(pieces.concat(), text);
        assert_eq!(full, text);
        assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')));
        assert!(
            pieces.contains(&"🤖".to_string()),
            "emoji arrives whole: {pieces:?}"
        );
    }

    #[test]
    fn stop_string_cuts_and_is_never_emitted() {
        let (pieces, stopped, full) = run("Paris.\nUser: more", &["\nUser:"]);
        assert!(stopped);
        assert_eq!(full, "Paris.");
        assert_eq!(pieces.concat(), "Paris.");
    }

    #[test]
    fn partial_stop_prefix_is_released_at_the_end() {
        let (pieces, stopped, full) = run("a\nUs", &["\nUser:"]);
        assert!(!stopped);
        assert_eq!(full, "a\nUs");
        assert_eq!(pieces.concat(), "a\nUs");
    }
}
