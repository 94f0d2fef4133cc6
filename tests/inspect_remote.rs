//! `inspect` of remote locations and of standard input: the same report as the local file,
//! read through the worker's stores; a missing object or bucket is named, exits 2, and the
//! other inputs are still inspected.

mod support;

use std::path::Path;
use std::process::Stdio;

use currents_heap_testkit::fixtures::{FIXTURE_ROOT, fixture_specs};
use support::moto::Moto;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

fn fixture(n: usize) -> (String, std::path::PathBuf) {
    let spec = &fixture_specs()[n];
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(FIXTURE_ROOT)
        .join(spec.key());
    (spec.key(), path)
}

fn inspect(moto: &Moto, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_currents-heap"));
    moto.aws_env(&mut command)
        .arg("inspect")
        .args(args)
        .env("NO_COLOR", "1")
        .env("CURRENTS_HEAP_S3_PATH_STYLE", "true")
        .stdin(Stdio::null());
    command
}

async fn run(mut command: Command) -> (i32, String, String) {
    let output = command.output().await.unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[tokio::test]
async fn an_s3_object_a_prefix_and_stdin_print_what_the_local_file_prints() {
    let moto = Moto::start().await;
    moto.create_bucket("inspect-src").await;
    let (key, path) = fixture(0);
    let (other_key, other_path) = fixture(1);
    let store = moto.store("inspect-src", "");
    use currents_heap::store::ObjectStore;
    store
        .put(&format!("exports/{key}"), std::fs::read(&path).unwrap())
        .await
        .unwrap();
    store
        .put(
            &format!("exports/{other_key}"),
            std::fs::read(&other_path).unwrap(),
        )
        .await
        .unwrap();
    store
        .put("exports/notes.txt", b"not avro, not listed".to_vec())
        .await
        .unwrap();

    let local = |paths: &[&Path]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_currents-heap"));
        command.arg("inspect").args(paths).env("NO_COLOR", "1");
        command
    };
    for heap in [false, true] {
        let flags: &[&str] = if heap { &["--heap"] } else { &[] };
        let mut expected = local(&[&path]);
        expected.args(flags);
        let (code, expected, _) = run(expected).await;
        assert_eq!(code, 0);
        assert!(!expected.is_empty());

        let url = format!("s3://inspect-src/exports/{key}");
        let mut remote = inspect(&moto, &[&url]);
        remote.args(flags);
        let (code, printed, stderr) = run(remote).await;
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(printed, expected, "the object prints as the local file");

        let mut stdin = inspect(&moto, &["-"]);
        stdin
            .args(flags)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = stdin.spawn().unwrap();
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(&std::fs::read(&path).unwrap())
            .await
            .unwrap();
        drop(pipe);
        let output = child.wait_with_output().await.unwrap();
        assert_eq!(output.status.code(), Some(0));
        assert_eq!(String::from_utf8(output.stdout).unwrap(), expected);
    }

    // A prefix: every .avro object under it, in key order, as the two local files are.
    let (code, expected, _) = run(local(&[&path, &other_path])).await;
    assert_eq!(code, 0);
    let mut sorted = [(key.clone(), &path), (other_key.clone(), &other_path)];
    sorted.sort();
    let (_, in_key_order, _) = run(local(&[sorted[0].1, sorted[1].1])).await;
    let (code, printed, stderr) = run(inspect(&moto, &["s3://inspect-src/exports/"])).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(printed, in_key_order);
    assert_eq!(printed.lines().count(), expected.lines().count());
    // Without the trailing `/` too: no object has that key, so it is a prefix.
    let (code, printed, _) = run(inspect(&moto, &["s3://inspect-src/exports"])).await;
    assert_eq!((code, printed), (0, in_key_order));
}

#[tokio::test]
async fn a_missing_object_or_bucket_is_named_exits_2_and_the_others_are_still_inspected() {
    let moto = Moto::start().await;
    moto.create_bucket("inspect-there").await;
    let (key, path) = fixture(0);
    use currents_heap::store::ObjectStore;
    moto.store("inspect-there", "")
        .put(&key, std::fs::read(&path).unwrap())
        .await
        .unwrap();
    let good = format!("s3://inspect-there/{key}");
    let missing = "s3://inspect-there/exports/nothing-here.avro";
    let no_bucket = "s3://inspect-no-such-bucket/x.avro";
    let (code, printed, stderr) = run(inspect(&moto, &[missing, &good, no_bucket])).await;
    assert_eq!(code, 2, "{stderr}");
    let events = fixture_specs()[0].options.events;
    assert_eq!(
        printed.lines().count(),
        events,
        "the good object is printed"
    );
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(
        errors
            .iter()
            .any(|l| l.contains(missing) && l.contains("not found")),
        "{stderr}"
    );
    assert!(
        errors
            .iter()
            .any(|l| l.contains(no_bucket) && l.contains("not found")),
        "{stderr}"
    );
    assert!(
        errors.last().unwrap().contains("2 of 3 files failed"),
        "{stderr}"
    );
    // Nothing of the credentials is echoed.
    assert!(!stderr.contains(support::moto::SECRET_KEY));

    // A location that cannot be one is a usage error before anything is read.
    let (code, printed, stderr) = run(inspect(&moto, &["s3://Bad_Bucket/x", &good])).await;
    assert_eq!((code, printed.as_str()), (2, ""), "{stderr}");
    assert!(stderr.contains("Bad_Bucket"), "{stderr}");
}
