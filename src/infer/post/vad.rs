//! Voice activity: per-frame speech probabilities (e.g. Silero VAD, one per
//! 32 ms chunk) → speech start/end events, with the hysteresis of
//! silero-vad's `get_speech_timestamps`: speech begins at a frame ≥
//! `threshold`, and ends only after `min_silence_ms` of frames below
//! `neg_threshold`; frames between the two thresholds keep the current
//! state. A segment shorter than `min_speech_ms` is dropped without events.
//! Streaming: `speech_start` is emitted once the segment has lasted
//! `min_speech_ms` (its timestamp is the real start), `speech_end` once the
//! silence has lasted `min_silence_ms` (its timestamp is where the silence
//! began). One [`VadTracker`] per stream, owned by the worker.

use serde::Serialize;

pub use crate::config::answer::{RawVad, VadConfig};

/// A segment boundary, timestamps in the stream's clock (µs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum VadEvent {
    SpeechStart { start_us: u64 },
    SpeechEnd { start_us: u64, end_us: u64 },
}

/// The VAD answer for one frame.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VadAnswer {
    pub probability: f32,
    /// Inside a confirmed speech segment after this frame.
    pub speaking: bool,
    /// Events this frame completed (at most one).
    pub events: Vec<VadEvent>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    Silence,
    Speech {
        start_us: u64,
        confirmed: bool,
        silence_since: Option<u64>,
    },
}

/// Hysteresis state of one audio stream.
#[derive(Clone, Debug)]
pub struct VadTracker {
    cfg: VadConfig,
    state: State,
}

impl VadTracker {
    pub fn new(cfg: VadConfig) -> VadTracker {
        VadTracker {
            cfg,
            state: State::Silence,
        }
    }

    pub fn speaking(&self) -> bool {
        matches!(
            self.state,
            State::Speech {
                confirmed: true,
                ..
            }
        )
    }

    fn end_event(&self, start_us: u64, end_us: u64) -> VadEvent {
        VadEvent::SpeechEnd {
            start_us: start_us.saturating_sub(self.cfg.speech_pad_us),
            end_us: end_us.saturating_add(self.cfg.speech_pad_us),
        }
    }

    /// Feeds one frame: its speech probability, start time and length.
    /// A NaN probability holds the current state.
    pub fn push(&mut self, probability: f32, frame_start_us: u64, frame_us: u64) -> VadAnswer {
        let c = self.cfg;
        let frame_end = frame_start_us.saturating_add(frame_us);
        let mut events = Vec::new();
        if self.state == State::Silence && probability >= c.threshold {
            self.state = State::Speech {
                start_us: frame_start_us,
                confirmed: false,
                silence_since: None,
            };
        }
        if let State::Speech {
            start_us,
            confirmed,
            silence_since,
        } = &mut self.state
        {
            if probability >= c.threshold {
                *silence_since = None;
            } else if probability < c.neg_threshold {
                let since = *silence_since.get_or_insert(frame_start_us);
                if frame_end.saturating_sub(since) >= c.min_silence_us {
                    let (start, was_confirmed) = (*start_us, *confirmed);
                    self.state = State::Silence;
                    if was_confirmed {
                        events.push(self.end_event(start, since));
                    }
                }
            }
        }
        if let State::Speech {
            start_us,
            confirmed: confirmed @ false,
            silence_since: None,
        } = &mut self.state
            && frame_end.saturating_sub(*start_us) >= c.min_speech_us
        {
            *confirmed = true;
            events.push(VadEvent::SpeechStart {
                start_us: start_us.saturating_sub(c.speech_pad_us),
            });
        }
        VadAnswer {
            probability,
            speaking: self.speaking(),
            events,
        }
    }

    /// Ends the stream (idle reset or shutdown): closes a confirmed segment
    /// at the start of its trailing silence, or at `now_us`.
    pub fn finish(&mut self, now_us: u64) -> Option<VadEvent> {
        let state = std::mem::replace(&mut self.state, State::Silence);
        match state {
            State::Speech {
                start_us,
                confirmed: true,
                silence_since,
            } => Some(self.end_event(start_us, silence_since.unwrap_or(now_us))),
            _ => None,
        }
    }
}
