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

#[test]
fn deb_package_installs_binary_unit_companions_and_config() {
    let out = tmpdir("deb");
    let o = Command::new("bash")
        .arg(common::repo().join("scripts/package-deb.sh"))
        .args(["amd64", env!("CARGO_BIN_EXE_reflexd")])
        .arg(&out)
        .env("DEB_COMPRESS", "none")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", all_output(&o));
    let deb = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(deb.ends_with("reflexd_0.1.0_amd64.deb"), "{deb}");
    let list = Command::new("dpkg-deb")
        .args(["-c", &deb])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    for (path, mode) in [
        ("./usr/bin/reflexd", "-rwxr-xr-x"),
        ("./usr/lib/systemd/system/reflexd.service", "-rw-r--r--"),
        ("./usr/lib/sysusers.d/reflexd.conf", "-rw-r--r--"),
        ("./usr/lib/tmpfiles.d/reflexd.conf", "-rw-r--r--"),
        ("./etc/reflexd/reflexd.toml", "-rw-r--r--"),
        ("./usr/share/doc/reflexd/deploy-jetson.md", "-rw-r--r--"),
    ] {
        assert!(
            list.lines()
                .any(|l| l.starts_with(mode) && l.contains(" root/root ") && l.ends_with(path)),
            "{path} ({mode}, root-owned) missing from:\n{list}"
        );
    }
    let field = |f: &str| {
        let o = Command::new("dpkg-deb")
            .args(["-f", &deb, f])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert_eq!(field("Package"), "reflexd");
    assert_eq!(field("Architecture"), "amd64");
    let ctrl = tmpdir("deb-ctrl");
    assert!(
        Command::new("dpkg-deb")
            .args(["-e", &deb])
            .arg(&ctrl)
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(
        std::fs::read_to_string(ctrl.join("conffiles")).unwrap(),
        "/etc/reflexd/reflexd.toml\n"
    );
    // The shipped config is the Jetson example with this architecture's
    // ONNX Runtime path, and still parses.
    let x = tmpdir("deb-x");
    assert!(
        Command::new("dpkg-deb")
            .args(["-x", &deb])
            .arg(&x)
            .status()
            .unwrap()
            .success()
    );
    let cfg = std::fs::read_to_string(x.join("etc/reflexd/reflexd.toml")).unwrap();
    assert!(cfg.contains("/usr/lib/x86_64-linux-gnu/libonnxruntime.so"));
    reflexd::Config::from_toml(&cfg, Path::new("/etc/reflexd")).unwrap();
    // The package holds the debug binary (hundreds of MB): do not keep it.
    for d in [&out, &ctrl, &x] {
        let _ = std::fs::remove_dir_all(d);
    }
}
