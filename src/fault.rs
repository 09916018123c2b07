//! Test-only fault injection, a leaf of the crate. Built with the cargo
//! feature `fault-injection` (integration tests enable it), a request whose
//! id names a stage panics there, so tests can prove that a panic costs one
//! request and never a worker: `fault:panic:<stage>` (or `fault.panic.<stage>`
//! where ids cannot hold `:`, as generation ids) with stage `run`, `encode`
//! (tensor pipelines), `sample`, `detok` (generations); `fault:die` panics
//! outside the per-job guard and kills its worker thread. Without the
//! feature every check compiles to nothing.

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

#[cfg(feature = "fault-injection")]
fn wanted(id: &str) -> Option<Stage> {
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
        ("fault:panic:run", Stage::Run),
        ("fault:panic:encode", Stage::Encode),
        ("fault:panic:sample", Stage::Sample),
        ("fault:panic:detok", Stage::Detok),
        ("fault:die", Stage::Die),
    ];
    stages.iter().find(|(w, _)| is(w)).map(|(_, s)| *s)
}

/// Panics if the request `id` asks for a fault at `stage`.
#[inline]
pub fn at(stage: Stage, id: Option<&str>) {
    #[cfg(feature = "fault-injection")]
    if let Some(id) = id
        && wanted(id) == Some(stage)
    {
        panic!("injected fault at {stage:?} for request {id:?}");
    }
    #[cfg(not(feature = "fault-injection"))]
    let _ = (stage, id);
}
