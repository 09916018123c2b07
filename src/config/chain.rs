//! In-process chains (docs/models.md, "Chains"): a pipeline with `after =
//! "<name>"` is a stage fed by that pipeline's result on the same worker,
//! without a zenoh round trip. The first stage (the head) is an ordinary
//! pipeline; later stages inherit its keys, level, deadline and queueing
//! (the whole chain is one request to its client) and only the last one
//! publishes. Chains are linear: each pipeline feeds at most one stage.
//! What flows between stages is fixed here: tensors (`feed`: model input ←
//! output of the stage before) or crops of the regions the stage before
//! found (its answer is `detect`; the stage's `[pipeline.pre]`, if any,
//! prepares each crop).

use super::common::At;
use super::image::{PreSpec, RawPre};
use super::raw::{Overflow, RawFormat, RawTensorPipeline};
use super::tensor::PendingLink;
use super::{
    AnswerKind, ConfigError, InputFormat, Link, LinkFeed, Outputs, PipelineConfig, invalid,
};

/// Placeholder keys of a stage until it inherits its head's.
const STAGE_KEY: &str = "reflexd/chain";

/// The keys a stage may not set: its head's apply to the whole chain.
fn head_only(p: &RawTensorPipeline) -> Option<&'static str> {
    let set = [
        ("input", p.input.is_some()),
        ("output", p.output.is_some()),
        ("error_key", p.error_key.is_some()),
        ("level", p.level.is_some()),
        ("deadline_ms", p.deadline_ms.is_some()),
        ("queue_capacity", p.queue_capacity.is_some()),
        ("max_streams", p.max_streams.is_some()),
        ("overflow", p.overflow == Overflow::Latest),
        ("format", p.format != RawFormat::Safetensors),
        ("raw", p.raw.is_some()),
        ("idle_reset_ms", p.idle_reset_ms.is_some()),
        ("state", !p.state.is_empty()),
        ("context", !p.context.is_empty()),
        ("max_queue_delay_us", p.max_queue_delay_us.is_some()),
        ("preferred_batch_sizes", p.preferred_batch_sizes.is_some()),
    ];
    set.into_iter().find(|(_, s)| *s).map(|(k, _)| k)
}

/// `(input, output)` of a pipeline: its own, or placeholders for a stage
/// (replaced by its head's in [`resolve`]).
pub(super) fn stage_keys(at: &At, p: &RawTensorPipeline) -> Result<(String, String), ConfigError> {
    if p.after.is_some() {
        if let Some(k) = head_only(p) {
            return Err(at.err(
                k,
                "is set on a chain stage (`after`): the first stage's keys, level, deadline and queueing apply to the whole chain",
            ));
        }
        return Ok((STAGE_KEY.into(), STAGE_KEY.into()));
    }
    let missing = |k: &str| {
        at.err(
            k,
            "missing: a pipeline needs `input` and `output` (zenoh keys), or `after` (the pipeline it follows in a chain)",
        )
    };
    Ok((
        p.input.clone().ok_or_else(|| missing("input"))?,
        p.output.clone().ok_or_else(|| missing("output"))?,
    ))
}

/// Resolves `after` names into links, fills `head`/`next`, copies the
/// head's keys into its stages and checks what each stage can take.
pub(super) fn resolve(
    pipelines: &mut [PipelineConfig],
    pending: Vec<Option<PendingLink>>,
) -> Result<(), ConfigError> {
    for (i, link) in pending.into_iter().enumerate() {
        let Some(link) = link else { continue };
        let at = At(&pipelines[i].name);
        let after = pipelines
            .iter()
            .position(|q| q.name == link.after)
            .ok_or_else(|| {
                at.err(
                    "after",
                    format!("= {:?}: no tensor pipeline of that name", link.after),
                )
            })?;
        if after == i {
            return Err(at.err("after", "names the pipeline itself"));
        }
        if let Some(other) = pipelines[after].next {
            return Err(at.err(
                "after",
                format!(
                    "= {:?}: that pipeline already feeds {:?} (chains are linear)",
                    link.after, pipelines[other].name
                ),
            ));
        }
        let feed = match (link.feed, link.pre) {
            (Some(_), Some(_)) => {
                return Err(at.err(
                    "pre",
                    "a stage fed with tensors (`feed`) takes no [pipeline.pre]",
                ));
            }
            (Some(map), None) => LinkFeed::Tensors(map),
            // Classifying crops takes the generic pre-processing, with its
            // defaults when no table is given.
            (None, None) if classifies(&pipelines[i]) => LinkFeed::Crops(Some(
                PreSpec::from_raw(&RawPre::default())
                    .map_err(|e| at.err(&format!("pre.{}", e.key), e.message))?,
            )),
            (None, pre) => LinkFeed::Crops(pre),
        };
        pipelines[after].next = Some(i);
        pipelines[i].format = InputFormat::Chained(Link { after, feed });
    }
    let n = pipelines.len();
    for i in 0..n {
        let mut head = i;
        let mut steps = 0;
        while let InputFormat::Chained(l) = &pipelines[head].format {
            head = l.after;
            steps += 1;
            if steps > n {
                return Err(invalid(format!(
                    "pipeline {:?}: after: the chain loops back to itself",
                    pipelines[i].name
                )));
            }
        }
        pipelines[i].head = head;
    }
    for i in 0..n {
        let h = pipelines[i].head;
        if h != i {
            let head = pipelines[h].clone();
            let p = &mut pipelines[i];
            p.input = head.input;
            p.output = head.output;
            p.error_key = head.error_key;
            p.level = head.level;
            p.deadline = head.deadline;
            p.overflow = head.overflow;
            p.idle_reset = head.idle_reset;
        }
    }
    for i in 0..n {
        check(pipelines, i)?;
    }
    Ok(())
}

fn classifies(p: &PipelineConfig) -> bool {
    matches!(
        p.answer.as_ref().map(|a| &a.kind),
        Some(AnswerKind::Classify(_))
    )
}

/// What one pipeline of a chain (or outside one) may be, given its
/// neighbours.
fn check(ps: &[PipelineConfig], i: usize) -> Result<(), ConfigError> {
    let p = &ps[i];
    let at = At(&p.name);
    if p.ocr.is_some()
        && let Some(n) = p.next
    {
        return Err(At(&ps[n].name).err(
            "after",
            format!(
                "= {:?}: an OCR pipeline runs its own chain (det → cls → rec) and publishes text lines; nothing can follow it",
                p.name
            ),
        ));
    }
    let kind = p.answer.as_ref().map(|a| &a.kind);
    if matches!(kind, Some(AnswerKind::Vad(_))) {
        if p.head != i || p.next.is_some() {
            return Err(at.err("answer.kind", "\"vad\" cannot be part of a chain"));
        }
        if p.overflow != Overflow::Latest {
            return Err(at.err(
                "answer.kind",
                "\"vad\" keeps speech state per stream: it needs overflow = \"latest\"",
            ));
        }
    }
    if matches!(kind, Some(AnswerKind::Detect(_))) && !matches!(p.format, InputFormat::Image(_)) {
        return Err(at.err(
            "answer.kind",
            "\"detect\" maps boxes back to the frame: it needs format = \"image\"",
        ));
    }
    if let Some(n) = p.next {
        if let Some(a) = &p.answer
            && a.outputs != Outputs::Answer
        {
            return Err(at.err(
                "answer.outputs",
                format!(
                    "only the last stage of a chain publishes; {:?} feeds {:?}",
                    p.name, ps[n].name
                ),
            ));
        }
        if let InputFormat::Chained(Link {
            feed: LinkFeed::Tensors(_),
            ..
        }) = &ps[n].format
            && p.answer.is_some()
        {
            return Err(at.err(
                "answer",
                format!(
                    "{:?} is fed with this pipeline's tensors (`feed`), so its answer would be lost; remove one",
                    ps[n].name
                ),
            ));
        }
    }
    if let InputFormat::Chained(Link {
        after,
        feed: LinkFeed::Crops(_),
    }) = &p.format
    {
        check_crops(ps, i, *after)?;
    }
    Ok(())
}

/// A stage fed with crops needs regions before it and a per-region answer.
fn check_crops(ps: &[PipelineConfig], i: usize, after: usize) -> Result<(), ConfigError> {
    let p = &ps[i];
    let at = At(&p.name);
    let regions = matches!(
        ps[after].answer.as_ref().map(|a| &a.kind),
        Some(AnswerKind::Detect(_))
    );
    if !regions {
        return Err(at.err(
            "after",
            format!(
                "= {:?}: a stage without `feed` takes crops of the regions the stage before found, but {:?} has no region answer (answer.kind = \"detect\"); add `feed` to pass tensors instead",
                ps[after].name, ps[after].name
            ),
        ));
    }
    match p.answer.as_ref().map(|a| (&a.kind, a.outputs)) {
        Some((AnswerKind::Classify(_), Outputs::Answer)) => Ok(()),
        Some((AnswerKind::Classify(_), _)) => Err(at.err(
            "answer.outputs",
            "a stage fed with crops runs once per batch of crops: it publishes its answer only",
        )),
        _ => Err(at.err(
            "answer.kind",
            "a stage fed with crops needs a per-region answer: kind = \"classify\"",
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::Config;
    use super::*;

    const CAM: &str = r#"
        [[level]]
        name = "fast"
        [[level]]
        name = "slow"
        [[pipeline]]
        name = "cam"
        model = "det.onnx"
        input = "cam/*"
        output = "out/cam"
        level = "slow"
        deadline_ms = 300
        overflow = "latest"
        format = "image"
        answer = { kind = "detect" }
    "#;

    fn with(stage: &str) -> Result<Config, String> {
        Config::from_toml(&format!("{CAM}\n[[pipeline]]\n{stage}"), Path::new("/b"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_stage_inherits_its_heads_keys_and_is_linked_both_ways() {
        let c = with(
            "name = \"cls\"\nmodel = \"c.onnx\"\nafter = \"cam\"\nmax_batch = 4\nanswer = { kind = \"classify\" }",
        )
        .unwrap();
        let (cam, cls) = (&c.pipelines[0], &c.pipelines[1]);
        assert_eq!((cam.next, cam.head), (Some(1), 0));
        assert_eq!((cls.next, cls.head), (None, 0));
        assert_eq!(
            (&cls.input, &cls.output, cls.level, cls.deadline),
            (&cam.input, &cam.output, cam.level, cam.deadline)
        );
        assert_eq!(cls.error_key, "out/cam/error");
        let InputFormat::Chained(Link {
            after: 0,
            feed: LinkFeed::Crops(Some(_)),
        }) = &cls.format
        else {
            panic!("{:?}", cls.format)
        };
    }

    #[test]
    fn stage_errors_name_the_key() {
        let cases = [
            (
                "name = \"x\"\nmodel = \"c.onnx\"\nafter = \"nope\"",
                "after",
            ),
            ("name = \"x\"\nmodel = \"c.onnx\"\nafter = \"x\"", "itself"),
            (
                "name = \"x\"\nmodel = \"c.onnx\"\nafter = \"cam\"\ninput = \"a\"\nanswer = { kind = \"classify\" }",
                "input",
            ),
            (
                "name = \"x\"\nmodel = \"c.onnx\"\nafter = \"cam\"\nlevel = \"fast\"\nanswer = { kind = \"classify\" }",
                "level",
            ),
            (
                "name = \"x\"\nmodel = \"c.onnx\"\nafter = \"cam\"",
                "answer.kind",
            ),
            (
                "name = \"x\"\nmodel = \"c.onnx\"\nafter = \"cam\"\nanswer = { kind = \"classify\", outputs = \"both\" }",
                "answer.outputs",
            ),
            (
                "name = \"x\"\nmodel = \"c.onnx\"\nafter = \"cam\"\nfeed = { a = \"b\" }",
                "answer would be lost",
            ),
            ("name = \"x\"\nmodel = \"c.onnx\"\ninput = \"i\"", "output"),
        ];
        for (stage, want) in cases {
            let e = with(stage).unwrap_err();
            assert!(e.contains(want) && e.contains("pipeline"), "{stage}: {e}");
        }
    }

    #[test]
    fn chains_are_linear_and_loops_are_refused() {
        let two = "name = \"a\"\nmodel = \"c.onnx\"\nafter = \"cam\"\nanswer = { kind = \"classify\" }\n[[pipeline]]\nname = \"b\"\nmodel = \"c.onnx\"\nafter = \"cam\"\nanswer = { kind = \"classify\" }";
        assert!(with(two).unwrap_err().contains("linear"));
        let text = "[[pipeline]]\nname = \"p\"\nmodel = \"m\"\nafter = \"q\"\nfeed = { x = \"y\" }\n[[pipeline]]\nname = \"q\"\nmodel = \"m\"\nafter = \"p\"\nfeed = { x = \"y\" }";
        let e = Config::from_toml(text, Path::new("/b"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("loops"), "{e}");
    }

    #[test]
    fn answer_kinds_need_their_inputs() {
        let base = "[[pipeline]]\nname = \"p\"\nmodel = \"m\"\ninput = \"i/*\"\noutput = \"o\"\n";
        let err = |extra: &str| {
            Config::from_toml(&format!("{base}{extra}"), Path::new("/b"))
                .unwrap_err()
                .to_string()
        };
        assert!(err("answer = { kind = \"vad\" }").contains("latest"));
        assert!(err("answer = { kind = \"detect\" }").contains("format = \"image\""));
        assert!(err("answer = { kind = \"segment\" }").contains("detect, classify, vad"));
        assert!(err("answer = { kind = \"classify\", top_k = 0 }").contains("answer.top_k"));
        assert!(err("answer = { kind = \"classify\", outputs = \"some\" }").contains("outputs"));
        assert!(err("answer = { kind = \"classify\", topk = 3 }").contains("topk"));
        assert!(err("pre = { color = \"rgb\" }").contains("format = \"image\""));
        assert!(err("format = \"image\"\npre = { pad = 3 }").contains("pre.pad"));
    }
}
