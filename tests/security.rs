//! Security through zenoh's own mechanisms, configured by a zenoh JSON5 file
//! (`[zenoh] config_file`): the daemon listens on TLS with mutual
//! authentication and an access-control list keyed on certificate common
//! names. Certificates are made at test time with the `openssl` CLI (a
//! throw-away CA in a temp dir). Checks: an allowed client gets predictions;
//! a read-only client sees outputs but its requests are refused; a client
//! with a CA-signed certificate outside the ACL can neither publish nor read;
//! a client without a certificate cannot connect at all; a key the ACL does
//! not list is refused even to the allowed client.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use reflexd::tensor::{f32_tensor, f32_values};
use reflexd::{Config, Daemon};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl CLI is needed to make test certificates");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA plus leaf certificates (P-256) signed by it: `<name>.pem`/`.key`.
fn make_pki(dir: &Path, ca: &str, leaves: &[(&str, &str)]) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={ca}"),
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.pem"),
        ],
    );
    for (name, ext) in leaves {
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.pem"),
            ],
        );
    }
}

const SERVER_EXT: &str = "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n";
const CLIENT_EXT: &str = "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth,serverAuth\n";

fn p(dir: &Path, f: &str) -> String {
    dir.join(f).display().to_string()
}

/// The daemon's zenoh config: the example `config/zenoh-secure.json5` with
/// this test's port and certificate paths filled in.
fn daemon_zenoh(dir: &Path, port: u16) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("config/zenoh-secure.json5"))
        .unwrap()
        .replace("tls/0.0.0.0:7448", &format!("tls/127.0.0.1:{port}"))
        .replace("/etc/reflexd/tls/ca.pem", &p(dir, "ca.pem"))
        .replace("/etc/reflexd/tls/reflexd.pem", &p(dir, "reflexd.pem"))
        .replace("/etc/reflexd/tls/reflexd.key", &p(dir, "reflexd.key"))
        .replace("robot/cmd/", "t/in/")
        .replace("robot/out/", "t/out/");
    let path = dir.join("zenoh.json5");
    std::fs::write(&path, text).unwrap();
    path
}

/// A loopback peer connecting over TLS with the given CA and, if any,
/// client certificate.
async fn tls_client(port: u16, ca: &str, cert: Option<(&str, &str)>) -> zenoh::Session {
    let (mtls, cert_cfg) = match cert {
        Some((c, k)) => (
            true,
            format!(r#"connect_certificate: "{c}", connect_private_key: "{k}","#),
        ),
        None => (false, String::new()),
    };
    let json = format!(
        r#"{{ mode: "peer", listen: {{ endpoints: [] }},
             connect: {{ endpoints: ["tls/127.0.0.1:{port}"] }},
             scouting: {{ multicast: {{ enabled: false }}, gossip: {{ enabled: false }} }},
             transport: {{ link: {{ tls: {{ root_ca_certificate: "{ca}", enable_mtls: {mtls}, {cert_cfg} }} }} }} }}"#
    );
    zenoh::open(zenoh::Config::from_json5(&json).unwrap())
        .await
        .unwrap()
}

async fn connected(s: &zenoh::Session) -> bool {
    for _ in 0..100 {
        if s.info().peers_zid().await.next().is_some() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_and_acl_let_only_the_allowed_clients_in() {
    let dir = std::env::temp_dir().join(format!("reflexd-security-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    make_pki(
        &dir,
        "ca",
        &[
            ("reflexd", SERVER_EXT),
            ("operator", CLIENT_EXT),
            ("viewer", CLIENT_EXT),
            ("intruder", CLIENT_EXT),
        ],
    );
    // A second, unrelated CA: its certificates must not be accepted.
    make_pki(&dir, "rogue-ca", &[("operator-rogue", CLIENT_EXT)]);

    let port = free_port();
    let zcfg = daemon_zenoh(&dir, port);
    let affine = test_model("affine.onnx");
    let toml = format!(
        r#"
        [zenoh]
        config_file = "{}"
        [[pipeline]]
        name = "affine"
        model = "{affine}"
        input = "t/in/affine/*"
        output = "t/out/affine"
        [[pipeline]]
        name = "admin"
        model = "{affine}"
        input = "t/admin/*"
        output = "t/out/admin"
        "#,
        zcfg.display()
    );
    let cfg = Config::from_toml(&toml, &repo()).unwrap();
    let daemon = Daemon::start(cfg).await.unwrap();
    let ca = p(&dir, "ca.pem");
    let good = |id: &str| request(&[f32_tensor("x", &[1, 4], &[1.0; 4])], id, 0);

    // Allowed: the operator sends requests and reads predictions.
    let op = tls_client(
        port,
        &ca,
        Some((&p(&dir, "operator.pem"), &p(&dir, "operator.key"))),
    )
    .await;
    assert!(connected(&op).await, "operator must connect");
    let op_sub = subscribe(&op, "t/out/**").await;
    until_served(&op, "t/in/affine/a", &good("op-probe"), &op_sub).await;

    // Read-only: the viewer connects and subscribes ...
    let viewer = tls_client(
        port,
        &ca,
        Some((&p(&dir, "viewer.pem"), &p(&dir, "viewer.key"))),
    )
    .await;
    assert!(connected(&viewer).await, "viewer must connect");
    let viewer_sub = subscribe(&viewer, "t/out/**").await;
    // ... a CA-signed certificate outside the ACL connects but gets nothing ...
    let intruder = tls_client(
        port,
        &ca,
        Some((&p(&dir, "intruder.pem"), &p(&dir, "intruder.key"))),
    )
    .await;
    assert!(
        connected(&intruder).await,
        "the TLS handshake itself succeeds"
    );
    let intruder_sub = subscribe(&intruder, "t/out/**").await;
    // ... and clients without a valid certificate never connect.
    let no_cert = tls_client(port, &ca, None).await;
    let rogue = tls_client(
        port,
        &ca,
        Some((
            &p(&dir, "operator-rogue.pem"),
            &p(&dir, "operator-rogue.key"),
        )),
    )
    .await;
    assert!(!connected(&no_cert).await, "mTLS: no certificate, no link");
    assert!(!connected(&rogue).await, "mTLS: unknown CA, no link");
    tokio::time::sleep(Duration::from_millis(500)).await; // declarations settle

    let received = |d: &Daemon| -> Vec<u64> { d.stats().iter().map(|s| s.received).collect() };
    let before = received(&daemon);
    // Refused publishers: the viewer and the intruder on the request key,
    // the clients without a link, and the operator on a key the ACL does not
    // list.
    for (s, key) in [
        (&viewer, "t/in/affine/v"),
        (&intruder, "t/in/affine/i"),
        (&no_cert, "t/in/affine/n"),
        (&rogue, "t/in/affine/r"),
        (&op, "t/admin/a"),
    ] {
        for i in 0..5 {
            put(s, key, good(&format!("refused-{i}"))).await;
        }
    }
    // Then one allowed request; its prediction is the marker that the
    // refused puts above had every chance to arrive first on their links.
    put(&op, "t/in/affine/a", good("op-1")).await;
    let r = recv(&op_sub).await;
    assert_eq!(r.id().as_deref(), Some("op-1"));
    assert_eq!(f32_values(r.tensor("y")).unwrap(), vec![3.0; 4]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = received(&daemon);
    assert_eq!(
        after[0],
        before[0] + 1,
        "only the operator's request reached ingress"
    );
    assert_eq!(
        after[1], before[1],
        "the ACL refuses t/admin/** to everyone"
    );

    // The viewer read the operator's prediction; the intruder read nothing.
    let seen = try_recv(&viewer_sub, WAIT)
        .await
        .expect("viewer reads outputs");
    assert_eq!(seen.id().as_deref(), Some("op-1"));
    assert!(
        try_recv(&intruder_sub, Duration::from_millis(500))
            .await
            .is_none(),
        "the intruder must not read outputs"
    );
    for s in [op, viewer, intruder, no_cert, rogue] {
        s.close().await.unwrap();
    }
    daemon.shutdown(Duration::from_secs(5)).await;
}

/// A tool's zenoh file: the example `config/zenoh-client-secure.json5` with
/// this test's endpoint and certificate paths filled in.
fn tool_zenoh(dir: &Path, name: &str, endpoint: &str, cert: &str) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("config/zenoh-client-secure.json5"))
        .unwrap()
        .replace("tls/127.0.0.1:7448", endpoint)
        .replace("/etc/reflexd/tls/ca.pem", &p(dir, "ca.pem"))
        .replace(
            "/etc/reflexd/tls/operator.pem",
            &p(dir, &format!("{cert}.pem")),
        )
        .replace(
            "/etc/reflexd/tls/operator.key",
            &p(dir, &format!("{cert}.key")),
        );
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The operator tools against the TLS/mTLS daemon of config/secure.toml:
/// `tap` with `--zenoh-config` reads predictions, `top` reads the metrics
/// with the file from REFLEXD_ZENOH_CONFIG and the endpoint from
/// REFLEXD_CONNECT (which replaces the file's), `prompt` gets through to
/// the ACL (and is told no generation pipeline serves its key), and a
/// certificate from another CA is refused with a clean error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_reach_the_tls_daemon_through_a_zenoh_config_file() {
    let dir = std::env::temp_dir().join(format!("reflexd-security-tools-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    make_pki(
        &dir,
        "ca",
        &[("reflexd", SERVER_EXT), ("operator", CLIENT_EXT)],
    );
    make_pki(&dir, "rogue-ca", &[("rogue", CLIENT_EXT)]);
    let port = free_port();
    let toml = format!(
        "[zenoh]\nconfig_file = \"{}\"\n[[pipeline]]\nname = \"affine\"\nmodel = \"{}\"\ninput = \"t/in/affine/*\"\noutput = \"t/out/affine\"\n",
        daemon_zenoh(&dir, port).display(),
        test_model("affine.onnx")
    );
    let daemon = Daemon::start(Config::from_toml(&toml, &repo()).unwrap())
        .await
        .unwrap();
    let endpoint = format!("tls/127.0.0.1:{port}");
    let good = tool_zenoh(&dir, "operator.json5", &endpoint, "operator");
    // The right certificate, a wrong endpoint: REFLEXD_CONNECT must win.
    let elsewhere = tool_zenoh(&dir, "elsewhere.json5", "tls/127.0.0.1:1", "operator");
    let rogue = tool_zenoh(&dir, "rogue.json5", &endpoint, "rogue");
    let tool = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_reflexd"));
        c.args(args)
            .env("REFLEXD_LOG", "warn,zenoh=error")
            .env_remove("REFLEXD_CONNECT")
            .env_remove("REFLEXD_ZENOH_CONFIG");
        c
    };

    // tap, flag form: one decoded prediction of an operator's request.
    let mut tap = tool(&["tap", "t/out/**", "--count", "1", "--timeout", "30"])
        .arg("--zenoh-config")
        .arg(&good)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let op = tls_client(
        port,
        &p(&dir, "ca.pem"),
        Some((&p(&dir, "operator.pem"), &p(&dir, "operator.key"))),
    )
    .await;
    assert!(connected(&op).await, "operator must connect");
    let req = request(&[f32_tensor("x", &[1, 4], &[1.0; 4])], "via-tls", 1);
    let mut status = None;
    for _ in 0..200 {
        put(&op, "t/in/affine/a", req.clone()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Some(s) = tap.try_wait().unwrap() {
            status = Some(s);
            break;
        }
    }
    let status = status.unwrap_or_else(|| {
        let _ = tap.kill();
        panic!("tap over TLS printed nothing")
    });
    let mut out = String::new();
    std::io::Read::read_to_string(&mut tap.stdout.take().unwrap(), &mut out).unwrap();
    assert!(status.success(), "{out}");
    assert!(
        out.starts_with("t/out/affine/a tensors y f32[1,4]") && out.contains("id=via-tls"),
        "{out}"
    );

    // top, environment form.
    let mut top = tool(&["top", "--once"]);
    top.env("REFLEXD_ZENOH_CONFIG", &elsewhere)
        .env("REFLEXD_CONNECT", &endpoint);
    let o = tokio::task::spawn_blocking(move || top.output().unwrap())
        .await
        .unwrap();
    let screen = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{screen}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(screen.lines().any(|l| l.starts_with("affine ")), "{screen}");

    // prompt reaches the daemon (the error is about the missing pipeline,
    // not the connection).
    let mut prompt = tool(&["prompt", "--connect-timeout", "1", "--input", "t/in/llm"]);
    prompt.arg("--zenoh-config").arg(&good).arg("Hi");
    let o = tokio::task::spawn_blocking(move || prompt.output().unwrap())
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "connected to {endpoint}, but nothing serves t/in/llm"
        )),
        "{err}"
    );

    // Another CA's certificate: no link, one clean line.
    let mut top = tool(&["top", "--once", "--connect-timeout", "1"]);
    top.arg("--zenoh-config").arg(&rogue);
    let o = tokio::task::spawn_blocking(move || top.output().unwrap())
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot connect to {endpoint} within 1s")),
        "{err}"
    );
    assert!(!err.contains(".rs:"), "{err}");

    op.close().await.unwrap();
    daemon.shutdown(Duration::from_secs(5)).await;
    let _ = std::fs::remove_dir_all(&dir);
}
