//! The files in systemd/ as systemd itself reads them: `systemd-analyze
//! verify` prints nothing for the unit (any output, even a warning, fails:
//! verify exits 0 on unknown keys), its offline security exposure stays at
//! or below 3.0, and the sysusers.d / tmpfiles.d entries create the user and
//! the directories in a scratch root. Needs systemd's tools (`make setup`
//! installs them from apt when missing); PID 1 need not be systemd.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} not found: run `make setup` (installs Debian's systemd package when missing)");
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("reflexd-unit-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The unit with /usr/bin/reflexd pointing at the binary under test
/// (verify checks that ExecStart/ExecStartPre are executable).
fn unit_under_test(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(common::repo().join("systemd/reflexd.service")).unwrap();
    assert!(text.contains("/usr/bin/reflexd run -c /etc/reflexd/reflexd.toml"));
    let p = dir.join("reflexd.service");
    std::fs::write(
        &p,
        text.replace("/usr/bin/reflexd", env!("CARGO_BIN_EXE_reflexd")),
    )
    .unwrap();
    p
}

fn all_output(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn systemd_analyze_verify_prints_nothing_for_the_unit() {
    let dir = tmpdir("verify");
    let unit = unit_under_test(&dir);
    let o = Command::new(tool("systemd-analyze"))
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", all_output(&o));
    assert_eq!(all_output(&o), "", "verify must print nothing");
}

#[test]
fn unit_declares_notify_watchdog_and_the_hardening_the_issue_asks_for() {
    let text = std::fs::read_to_string(common::repo().join("systemd/reflexd.service")).unwrap();
    let keys: Vec<(&str, &str)> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .collect();
    for want in [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("Restart", "on-failure"),
        ("User", "reflexd"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", "CAP_SYS_NICE"),
        ("AmbientCapabilities", "CAP_SYS_NICE"),
        ("DevicePolicy", "closed"),
        (
            "ExecStartPre",
            "/usr/bin/reflexd check -c /etc/reflexd/reflexd.toml",
        ),
    ] {
        assert!(keys.contains(&want), "unit lacks {}={}", want.0, want.1);
    }
    for key in [
        "WatchdogSec",
        "StartLimitIntervalSec",
        "StartLimitBurst",
        "RestrictAddressFamilies",
        "DeviceAllow",
    ] {
        assert!(keys.iter().any(|(k, _)| *k == key), "unit lacks {key}=");
    }
}

#[test]
fn offline_security_exposure_is_at_most_3() {
    let dir = tmpdir("security");
    let unit = unit_under_test(&dir);
    let o = Command::new(tool("systemd-analyze"))
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let out = all_output(&o);
    let score: f64 = out
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for reflexd.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in:\n{out}"));
    println!("exposure score {score}");
    assert!(score <= 3.0, "exposure {score} > 3.0:\n{out}");
}

fn run_with_stdin(cmd: &mut Command, input: &Path) -> Output {
    let o = cmd
        .stdin(Stdio::from(std::fs::File::open(input).unwrap()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{:?}: {}", cmd, all_output(&o));
    o
}

#[test]
fn sysusers_and_tmpfiles_create_the_user_and_its_directories() {
    let root = tmpdir("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    let repo = common::repo();
    let root_arg = format!("--root={}", root.display());
    run_with_stdin(
        Command::new(tool("systemd-sysusers")).args([root_arg.as_str(), "-"]),
        &repo.join("systemd/reflexd.sysusers"),
    );
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    let user = passwd
        .lines()
        .find(|l| l.starts_with("reflexd:"))
        .unwrap_or_else(|| panic!("no reflexd user in {passwd}"));
    let f: Vec<&str> = user.split(':').collect();
    let uid: u32 = f[2].parse().unwrap();
    assert!(uid > 0 && uid < 1000, "a system uid: {user}");
    assert_eq!(f[5], "/var/lib/reflexd");
    assert!(f[6].ends_with("nologin"), "{user}");
    let group = std::fs::read_to_string(root.join("etc/group")).unwrap();
    assert!(
        group
            .lines()
            .any(|l| l.starts_with("video:") && l.ends_with(":reflexd")),
        "reflexd is in group video: {group}"
    );

    run_with_stdin(
        Command::new(tool("systemd-tmpfiles")).args(["--create", root_arg.as_str(), "-"]),
        &repo.join("systemd/reflexd.tmpfiles"),
    );
    for (dir, owner) in [
        ("etc/reflexd", 0),
        ("var/lib/reflexd/models", uid),
        ("var/cache/reflexd/trt", uid),
    ] {
        let m = std::fs::metadata(root.join(dir)).unwrap_or_else(|e| panic!("{dir}: {e}"));
        assert!(m.is_dir());
        assert_eq!(m.uid(), owner, "{dir} owner");
    }
}

/// `[package.metadata.deb]` as cargo-deb reads it (`make deb` builds and
/// checks the real package with scripts/package-deb.sh; cargo-deb is not
/// installed for tests): every packaged file exists, both binaries go to
/// /usr/bin, the unit and the sysusers entry are where cargo-deb finds them
/// by name, the service is enabled but not started, and each variant ships
/// /etc/reflexd/reflexd.toml under the package name `reflexd`.
#[test]
fn deb_metadata_names_every_file_and_both_variants() {
    let repo = common::repo();
    let manifest: toml::Value =
        toml::from_str(&std::fs::read_to_string(repo.join("Cargo.toml")).unwrap()).unwrap();
    let deb = &manifest["package"]["metadata"]["deb"];
    assert_eq!(deb["name"].as_str(), Some("reflexd"));
    let scripts = repo.join(deb["maintainer-scripts"].as_str().unwrap());
    for f in ["reflexd.service", "reflexd.sysusers"] {
        assert!(
            scripts.join(f).is_file(),
            "cargo-deb looks for {f} in {scripts:?}"
        );
    }
    let units = &deb["systemd-units"];
    assert_eq!(units["enable"].as_bool(), Some(true));
    assert_eq!(units["start"].as_bool(), Some(false), "models come first");
    let dests = |assets: &toml::Value| -> Vec<(String, String)> {
        let list = assets.as_array().expect("an asset list");
        list.iter()
            .map(|a| {
                let a = a.as_array().expect("[source, dest, mode]");
                assert_eq!(a.len(), 3, "{a:?}");
                let (src, dest) = (a[0].as_str().unwrap(), a[1].as_str().unwrap());
                // target/release/ is cargo-deb's name for the build outputs.
                if !src.starts_with("target/release/") {
                    assert!(repo.join(src).is_file(), "asset {src} does not exist");
                }
                (src.to_string(), dest.to_string())
            })
            .collect()
    };
    let base = dests(&deb["assets"]);
    for bin in ["reflexd", "reflexd-sim"] {
        assert!(
            base.contains(&(format!("target/release/{bin}"), "usr/bin/".into())),
            "{bin} is not packaged: {base:?}"
        );
    }
    assert!(base.contains(&(
        "systemd/reflexd.tmpfiles".into(),
        "usr/lib/tmpfiles.d/reflexd.conf".into()
    )));
    for arch in ["arm64", "amd64"] {
        let v = &deb["variants"][arch];
        assert_eq!(v["name"].as_str(), Some("reflexd"), "{arch}");
        let extra = dests(&v["merge-assets"]["append"]);
        assert_eq!(extra.len(), 1, "{arch}: {extra:?}");
        assert_eq!(extra[0].1, "etc/reflexd/reflexd.toml", "{arch}");
    }
}

/// The config each package ships (scripts/package-deb.sh writes the amd64
/// one): the Jetson example with that architecture's ONNX Runtime path, and
/// it still parses.
#[test]
fn deb_config_of_each_architecture_names_its_onnxruntime_and_parses() {
    let dir = tmpdir("deb-config");
    for (arch, multiarch) in [
        ("arm64", "aarch64-linux-gnu"),
        ("amd64", "x86_64-linux-gnu"),
    ] {
        let file = dir.join(format!("{arch}.toml"));
        let o = Command::new("bash")
            .arg(common::repo().join("scripts/package-deb.sh"))
            .args(["config", arch])
            .arg(&file)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", all_output(&o));
        let cfg = std::fs::read_to_string(&file).unwrap();
        let want = format!("onnxruntime = \"/usr/lib/{multiarch}/libonnxruntime.so\"");
        assert!(cfg.contains(&want), "{arch}: {want} missing");
        reflexd::Config::from_toml(&cfg, Path::new("/etc/reflexd"))
            .unwrap_or_else(|e| panic!("{arch}: {e}"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
