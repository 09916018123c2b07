//! Zenoh key expressions for ROS 2 topics. rmw_zenoh:
//! `<domain>/<topic without outer '/'>/<pkg>::msg::dds_::<Name>_/RIHS01_<hash>`
//! (rmw_zenoh `TopicInfo`, docs/design.md "Topic and Service name mapping").
//! zenoh-bridge-ros2dds: the topic without its leading `/`, behind the
//! bridge's `namespace` if it has one, and nothing else. Topic names are
//! checked against the ROS 2 naming rules first, so every key built here is a
//! valid zenoh key without wildcards.

use super::types::RosType;

/// Why a name is not a valid ROS 2 topic or namespace.
pub type NameError = String;

fn check_tokens(name: &str, what: &str) -> Result<(), NameError> {
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '/'))
    {
        return Err(format!(
            "{what} may contain only letters, digits, '_' and '/', found {c:?}"
        ));
    }
    for tok in name.trim_start_matches('/').split('/') {
        if tok.is_empty() {
            return Err(format!(
                "{what} has an empty segment ('//' or a trailing '/')"
            ));
        }
        if tok.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(format!(
                "{what} segment {tok:?} starts with a digit, which ROS 2 names forbid"
            ));
        }
    }
    Ok(())
}

/// Validates a topic name and returns its fully qualified form. A relative
/// name (`camera/image_raw`) resolves against reflexd's node namespace `/`;
/// private (`~`) and substitution (`{node}`) names are not supported.
pub fn full_topic_name(topic: &str) -> Result<String, NameError> {
    if topic.is_empty() || topic == "/" {
        return Err("a topic name cannot be empty".into());
    }
    if topic.starts_with('~') || topic.contains('{') {
        return Err("private (~) and substitution ({...}) names are not supported; write the full name, e.g. \"/camera/image_raw\"".into());
    }
    check_tokens(topic, "a topic name")?;
    Ok(if topic.starts_with('/') {
        topic.to_string()
    } else {
        format!("/{topic}")
    })
}

/// Validates a bridge namespace (`/bot1` or `bot1`) and returns it without
/// outer slashes; `/` alone means none.
pub fn bridge_namespace(ns: &str) -> Result<Option<String>, NameError> {
    let inner = ns.trim_matches('/');
    if inner.is_empty() {
        return Ok(None);
    }
    check_tokens(inner, "a namespace")?;
    Ok(Some(inner.to_string()))
}

/// The rmw_zenoh data key for a (fully qualified) topic.
pub fn rmw_zenoh_key(domain: u32, topic: &str, ty: RosType) -> String {
    format!(
        "{domain}/{}/{}/{}",
        topic.trim_matches('/'),
        ty.dds_name(),
        ty.type_hash()
    )
}

/// The key to *subscribe* to on rmw_zenoh: any type hash, so a publisher
/// whose distro hashes differently (Humble has no RIHS01) still reaches us;
/// the payload layout is the same.
pub fn rmw_zenoh_subscribe_key(domain: u32, topic: &str, ty: RosType) -> String {
    format!("{domain}/{}/{}/*", topic.trim_matches('/'), ty.dds_name())
}

/// The zenoh-bridge-ros2dds key for a (fully qualified) topic.
pub fn bridge_key(namespace: Option<&str>, topic: &str) -> String {
    let t = topic.trim_matches('/');
    match namespace {
        Some(ns) => format!("{ns}/{t}"),
        None => t.to_string(),
    }
}
