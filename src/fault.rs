//! Test-only fault injection, a leaf of the crate. Built with the cargo
//! feature `fault-injection` (integration tests enable it), a request whose
//! id names a stage panics there, so tests can prove that a panic costs one
//! request and never a worker: `fault:panic:<stage>` (or `fault.panic.<stage>`
//! where ids cannot hold `:`, as generation ids) with stage `run`, `encode`
//! (tensor pipelines), `sample`, `detok` (generations); `fault:die` panics
//! outside the per-job guard and kills its worker thread; `fault:slow:run`
//! holds its model run for [`SLOW_RUN`] (a run still going at shutdown).
//! Without the feature every check compiles to nothing.

/// Where a request can be made to fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Run,
    Encode,
    Sample,
    Detok,
    /// Outside the per-job guard: the worker thread dies.
    Die,
}

/// How long `fault:slow:run` holds its run.
pub const SLOW_RUN: std::time::Duration = std::time::Duration::from_millis(700);

/// What an injected fault does.
#[cfg(feature = "fault-injection")]
#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    Panic,
    Sleep,
}

#[cfg(feature = "fault-injection")]
fn wanted(id: &str) -> Option<(Stage, Action)> {
    // Compared in place: this runs for every request of a test build, and
    // the allocation benchmark counts what the hot path allocates.
    let is = |want: &str| {
        id.len() == want.len()
            && id
                .bytes()
                .zip(want.bytes())
                .all(|(a, b)| a == b || (a == b'.' && b == b':'))
    };
    let stages = [
        ("fault:panic:run", Stage::Run, Action::Panic),
        ("fault:panic:encode", Stage::Encode, Action::Panic),
        ("fault:panic:sample", Stage::Sample, Action::Panic),
        ("fault:panic:detok", Stage::Detok, Action::Panic),
        ("fault:die", Stage::Die, Action::Panic),
        ("fault:slow:run", Stage::Run, Action::Sleep),
    ];
    stages
        .iter()
        .find(|(w, ..)| is(w))
        .map(|(_, s, a)| (*s, *a))
}

/// Panics (or holds the run) if the request `id` asks for a fault at
/// `stage`.
#[inline]
pub fn at(stage: Stage, id: Option<&str>) {
    #[cfg(feature = "fault-injection")]
    if let Some(id) = id
        && let Some((s, action)) = wanted(id)
        && s == stage
    {
        match action {
            Action::Panic => panic!("injected fault at {stage:?} for request {id:?}"),
            Action::Sleep => std::thread::sleep(SLOW_RUN),
        }
    }
    #[cfg(not(feature = "fault-injection"))]
    let _ = (stage, id);
}
