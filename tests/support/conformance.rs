//! The one store conformance suite: every store (local, S3 on moto and s3s-fs, Azure on
//! Azurite, GCS on fake-gcs-server) gives the same answers, for the keys it can hold.

use std::collections::BTreeSet;
use std::sync::Arc;

use currents_heap::store::{ObjectMeta, ObjectStore, Opened, ReadRange, StoreErrorKind};

/// The same behaviour from every store, for keys every store can hold (s3s-fs included).
pub async fn conformance(store: &dyn ObjectStore, secrets: &[&str]) {
    store.put("a/b/one.txt", b"1".to_vec()).await.unwrap();
    store.put("a/b/two.txt", b"22".to_vec()).await.unwrap();
    store.put("a/c/three.txt", b"333".to_vec()).await.unwrap();
    store.put("z.txt", b"".to_vec()).await.unwrap();
    assert_eq!(store.get("a/b/two.txt").await.unwrap(), b"22");
    let listed = store.list("a/").await.unwrap();
    let keys: Vec<&str> = listed.iter().map(|m| m.key.as_str()).collect();
    assert_eq!(keys, ["a/b/one.txt", "a/b/two.txt", "a/c/three.txt"]);
    assert_eq!(listed[2].size, 3);
    assert!(listed.iter().all(|m| !m.etag.is_empty()));
    assert_eq!(
        store.list("a/b/t").await.unwrap().len(),
        1,
        "a prefix need not end at a folder"
    );
    assert_eq!(store.list_folders("").await.unwrap(), ["a/"]);
    assert_eq!(store.list_folders("a/").await.unwrap(), ["a/b/", "a/c/"]);
    range_conformance(store).await;
    read_conformance(store).await;
    assert_eq!(read_all(store, "a/c/three.txt").await, b"333");
    store
        .put("a/b/one.txt", b"replaced".to_vec())
        .await
        .unwrap();
    assert_eq!(store.get("a/b/one.txt").await.unwrap(), b"replaced");
    store.delete("a/b/one.txt").await.unwrap();
    store.delete("a/b/one.txt").await.unwrap();
    store.delete("never/was.txt").await.unwrap();
    let missing = store.get("a/b/one.txt").await.unwrap_err();
    assert_eq!(missing.kind, StoreErrorKind::NotFound, "{missing}");
    assert!(missing.to_string().contains("a/b/one.txt"), "{missing}");
    for secret in secrets {
        assert!(!missing.to_string().contains(secret), "{missing}");
    }
    assert!(!missing.to_string().contains('\n'), "one line: {missing}");
    let missing = store.open("a/b/one.txt").await.err().unwrap();
    assert_eq!(missing.kind, StoreErrorKind::NotFound, "{missing}");
    assert!(missing.to_string().contains("a/b/one.txt"), "{missing}");
}

pub async fn ranged_keys(
    store: &dyn ObjectStore,
    prefix: &str,
    start_after: &str,
    end: Option<&str>,
) -> Vec<String> {
    let listed = store.list_range(prefix, start_after, end).await.unwrap();
    listed.into_iter().map(|m| m.key).collect()
}

/// `list_range`'s bounds, on `a/b/one.txt`, `a/b/two.txt`, `a/c/three.txt`, `z.txt`.
async fn range_conformance(store: &dyn ObjectStore) {
    assert_eq!(
        ranged_keys(store, "a/", "a/b/one.txt", None).await,
        ["a/b/two.txt", "a/c/three.txt"],
        "the start is excluded when a key equals it"
    );
    assert_eq!(
        ranged_keys(store, "a/", "a/b/one.txt", Some("a/c/three.txt")).await,
        ["a/b/two.txt"],
        "the end is excluded when a key equals it"
    );
    assert_eq!(
        ranged_keys(store, "a/", "a/b", Some("a/c")).await,
        ["a/b/one.txt", "a/b/two.txt"],
        "bounds without a trailing `/` fall between folders"
    );
    assert_eq!(
        ranged_keys(store, "a/", "", None).await,
        ["a/b/one.txt", "a/b/two.txt", "a/c/three.txt"],
        "a start before the prefix: the whole prefix"
    );
    assert_eq!(
        ranged_keys(store, "a/b/", "a/", Some("z")).await,
        ["a/b/one.txt", "a/b/two.txt"],
        "bounds outside the prefix: only the prefix"
    );
    assert_eq!(
        ranged_keys(store, "", "a/c/three.txt", None).await,
        ["z.txt"]
    );
    assert!(
        ranged_keys(store, "a/", "a/c/three.txt", None)
            .await
            .is_empty()
    );
    assert!(
        ranged_keys(store, "a/", "a/b/two.txt", Some("a/b/two.txt"))
            .await
            .is_empty()
    );
    assert!(
        ranged_keys(store, "a/", "a/c", Some("a/b"))
            .await
            .is_empty(),
        "an end before the start"
    );
}

/// Reads `range` of `key` to its end: the bytes and the version the read named.
pub async fn read_range(
    store: &dyn ObjectStore,
    key: &str,
    range: ReadRange,
) -> Result<(Vec<u8>, ObjectMeta), currents_heap::store::StoreError> {
    let Opened {
        mut reader,
        version,
    } = store.open_range(key, &range).await?;
    let bytes = tokio::task::spawn_blocking(move || {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut reader, &mut bytes).unwrap();
        bytes
    })
    .await
    .unwrap();
    Ok((bytes, version))
}

/// `open_range`: the bytes asked for, the version of the whole object as the read's response
/// gave it (the same as a listing's), `if_etag` honoured, and errors of the right kind.
/// Leaves the store as it found it.
async fn read_conformance(store: &dyn ObjectStore) {
    const KEY: &str = "read/object.bin";
    let content: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
    store.put(KEY, content.clone()).await.unwrap();
    let listed = store.list("read/").await.unwrap();
    assert_eq!(listed.len(), 1);
    let listed = &listed[0];
    // A store that lists no ETag (s3s-fs; the listing falls back to the modification time)
    // may still send one with the object: then only the key and size can agree.
    let same = |read: &ObjectMeta| {
        if listed.etag.starts_with("lm") {
            (&read.key, read.size) == (&listed.key, listed.size)
        } else {
            read == listed
        }
    };

    let (whole, version) = read_range(store, KEY, ReadRange::default()).await.unwrap();
    assert_eq!(whole, content);
    assert!(
        same(&version),
        "a whole read names the listed version: {version:?} {listed:?}"
    );
    let listed = &version;

    let cases = [
        (0, Some(1)),
        (10, Some(20)),
        (999, Some(1000)),
        (0, None),
        (400, None),
        (999, None),
        (990, Some(5000)),
    ];
    for (start, end) in cases {
        let range = ReadRange {
            start,
            end,
            if_etag: None,
        };
        let (bytes, version) = read_range(store, KEY, range.clone()).await.unwrap();
        let until = end.map_or(content.len(), |e| (e as usize).min(content.len()));
        assert_eq!(bytes, content[start as usize..until], "{range:?}");
        assert_eq!(
            &version, listed,
            "the whole object's size and ETag for {range:?}"
        );
    }

    let current = ReadRange::starting_at(500).of_version(listed.etag.clone());
    let (bytes, version) = read_range(store, KEY, current.clone()).await.unwrap();
    assert_eq!(bytes, content[500..]);
    assert_eq!(&version, listed);
    let quoted = ReadRange::default().of_version(format!("\"{}\"", listed.etag));
    assert_eq!(
        read_range(store, KEY, quoted).await.unwrap().0,
        content,
        "quotes or none"
    );

    for start in [1000, 1500] {
        let past = read_range(store, KEY, ReadRange::starting_at(start))
            .await
            .err()
            .unwrap();
        assert_eq!(past.kind, StoreErrorKind::Invalid, "{past}");
        assert!(
            past.to_string().contains(&format!("bytes={start}-")),
            "{past}"
        );
    }
    let empty = ReadRange {
        start: 10,
        end: Some(10),
        if_etag: None,
    };
    let empty = read_range(store, KEY, empty).await.err().unwrap();
    assert_eq!(empty.kind, StoreErrorKind::Invalid, "{empty}");

    // Another version: a different size, so even a coarse clock gives the local store a new
    // tag.
    let replaced: Vec<u8> = content.iter().rev().copied().chain([1, 2, 3]).collect();
    store.put(KEY, replaced.clone()).await.unwrap();
    for stale in [
        current,
        ReadRange::default().of_version(listed.etag.clone()),
    ] {
        let refused = read_range(store, KEY, stale.clone()).await.err().unwrap();
        assert_eq!(
            refused.kind,
            StoreErrorKind::PreconditionFailed,
            "{stale:?}: {refused}"
        );
        assert!(refused.to_string().contains(KEY), "{refused}");
    }
    let (bytes, version) = read_range(store, KEY, ReadRange::starting_at(998))
        .await
        .unwrap();
    assert_eq!(bytes, replaced[998..]);
    assert_eq!(version.size, 1003);
    assert_ne!(version.etag, listed.etag, "an overwrite is another version");
    let relisted = store.list("read/").await.unwrap();
    assert!(relisted.len() == 1 && (relisted[0].etag.starts_with("lm") || relisted[0] == version));
    let (bytes, _) = read_range(store, KEY, ReadRange::default().of_version(version.etag))
        .await
        .unwrap();
    assert_eq!(bytes, replaced, "the new version reads by its own ETag");

    store.put("read/empty", Vec::new()).await.unwrap();
    let (bytes, version) = read_range(store, "read/empty", ReadRange::default())
        .await
        .unwrap();
    assert!(bytes.is_empty());
    assert_eq!(version.size, 0);

    for range in [
        ReadRange::default(),
        ReadRange::starting_at(5).of_version(listed.etag.clone()),
    ] {
        let missing = read_range(store, "read/missing", range)
            .await
            .err()
            .unwrap();
        assert_eq!(missing.kind, StoreErrorKind::NotFound, "{missing}");
        assert!(missing.to_string().contains("read/missing"), "{missing}");
    }
    store.delete(KEY).await.unwrap();
    store.delete("read/empty").await.unwrap();
}

pub async fn read_all(store: &dyn ObjectStore, key: &str) -> Vec<u8> {
    let mut reader = store.open(key).await.unwrap();
    tokio::task::spawn_blocking(move || {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut reader, &mut bytes).unwrap();
        bytes
    })
    .await
    .unwrap()
}

/// Keys S3 takes and a path would not: empty, `.` and `..` segments, a segment longer than
/// a file name, a key near S3's 1,024-byte limit, and names with `%`, `+`, `=`, spaces and
/// non-ASCII. No key is a folder of another: a directory cannot also be a file.
pub fn awkward_keys() -> Vec<String> {
    let mut keys: Vec<String> = [
        "a//b",
        "/lead",
        "/",
        "trail/",
        "a/./b",
        "a/../b",
        "../up",
        "./here",
        "dots/.",
        "dots/..",
        "dots/...",
        "dots/.hidden",
        "unicode/Grüße/日本語/🎉 party.avro",
        "spaces/with space/ leading and trailing ",
        "plus/a+b+0+0000000000.avro",
        "eq/event_type=users.behaviors.CustomEvent/date=2026-11-27-12/x=y",
        "pct/100%",
        "pct/a.b",
        "pct/a%2Eb",
        "pct/a%2eb",
        "pct/%",
        "pct/%25",
        "pct/%00",
        "pct/%+",
        "pct/x%+/y",
        "pct/%tmp.1-1",
    ]
    .map(String::from)
    .to_vec();
    keys.push(format!("long/{}/tail.avro", "segment-".repeat(40)));
    let deep = format!(
        "deep/{}/{}/{}",
        "x".repeat(300),
        "é".repeat(150),
        "y".repeat(200)
    );
    keys.push(format!("{deep}/{}", "z".repeat(1000 - deep.len() - 1)));
    keys
}

/// The folders S3 reports for `prefix` with the delimiter `/`.
fn folders_of(keys: &[String], prefix: &str) -> Vec<String> {
    let folders: BTreeSet<String> = keys
        .iter()
        .filter_map(|key| key.strip_prefix(prefix))
        .filter_map(|rest| {
            rest.find('/')
                .map(|end| format!("{prefix}{}", &rest[..=end]))
        })
        .collect();
    folders.into_iter().collect()
}

pub async fn listed_keys(store: &dyn ObjectStore, prefix: &str) -> Vec<String> {
    let listed = store.list(prefix).await.unwrap();
    listed.into_iter().map(|m| m.key).collect()
}

/// Every operation round-trips the exact keys, and listings agree with S3's rules at every
/// folder of every key.
pub async fn awkward_conformance(store: &dyn ObjectStore) {
    awkward_conformance_of(store, |_| true).await;
}

/// [`awkward_conformance`] for the keys `holds` takes; every other key is refused, by every
/// operation, with an error that names it, and is never stored as another key.
pub async fn awkward_conformance_of(store: &dyn ObjectStore, holds: fn(&str) -> bool) {
    let (mut keys, refused): (Vec<String>, Vec<String>) =
        awkward_keys().into_iter().partition(|k| holds(k));
    assert_eq!(awkward_keys().last().unwrap().len(), 1000);
    for key in &refused {
        let put = store.put(key, b"refused".to_vec()).await.unwrap_err();
        let get = store.get(key).await.unwrap_err();
        let delete = store.delete(key).await.unwrap_err();
        for error in [put, get, delete] {
            assert_eq!(error.kind, StoreErrorKind::Invalid, "{error}");
            assert!(error.to_string().contains(key.as_str()), "{error}");
            assert!(error.to_string().contains("cannot hold"), "{error}");
        }
    }
    assert!(
        store.list("").await.unwrap().is_empty(),
        "a refused key is stored as no other"
    );
    for key in &keys {
        store
            .put(key, key.as_bytes().to_vec())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    keys.sort();
    let listed = store.list("").await.unwrap();
    assert_eq!(
        listed.iter().map(|m| m.key.as_str()).collect::<Vec<_>>(),
        keys,
        "every key, exactly, in key order"
    );
    assert!(listed.iter().all(|m| m.size == m.key.len() as u64));
    for key in &keys {
        assert_eq!(
            store.get(key).await.unwrap_or_else(|e| panic!("{e}")),
            key.as_bytes()
        );
    }
    let longest = keys.iter().max_by_key(|k| k.len()).unwrap();
    assert_eq!(read_all(store, longest).await, longest.as_bytes());

    let mut prefixes: BTreeSet<String> = BTreeSet::from([String::new()]);
    for key in &keys {
        prefixes.extend(key.match_indices('/').map(|(i, _)| key[..=i].to_string()));
    }
    for prefix in &prefixes {
        assert_eq!(
            store.list_folders(prefix).await.unwrap(),
            folders_of(&keys, prefix),
            "folders of {prefix:?}"
        );
    }
    for prefix in prefixes
        .iter()
        .map(String::as_str)
        .chain(["/l", "a/.", "pct/%", "pct/a%2"])
        .filter(|p| holds(&format!("{p}x")))
    {
        let expected: Vec<String> = keys
            .iter()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        assert_eq!(
            listed_keys(store, prefix).await,
            expected,
            "keys under {prefix:?}"
        );
    }

    // Ranges agree with the order of UTF-8 bytes (`é` and `日` after ASCII, `%` before `+`).
    for i in (0..keys.len()).step_by(4) {
        let end = keys.get(i + 6).map(String::as_str);
        let expected = &keys[i + 1..(i + 6).min(keys.len())];
        assert_eq!(
            ranged_keys(store, "", &keys[i], end).await,
            expected,
            "after {:?} up to {end:?}",
            keys[i]
        );
    }

    for key in &keys {
        store.delete(key).await.unwrap();
        let missing = store.get(key).await.unwrap_err();
        assert_eq!(missing.kind, StoreErrorKind::NotFound, "{missing}");
        assert!(missing.to_string().contains(key.as_str()), "{missing}");
    }
    assert!(store.list("").await.unwrap().is_empty());
    assert!(
        store.list_folders("").await.unwrap().is_empty(),
        "a folder lives only as long as a key below it"
    );
}

/// 1,100 keys in 1,100 folders: S3 answers at most 1,000 per page, for either listing.
pub async fn many_keys_conformance(store: Arc<dyn ObjectStore>) {
    const N: usize = 1100;
    // Written out of order, so a listing cannot pass by echoing the order of writes.
    let folders: Vec<String> = (0..N)
        .map(|i| format!("many/{:04}/", i * 7919 % N))
        .collect();
    let mut writers = tokio::task::JoinSet::new();
    for chunk in folders.chunks(N / 10) {
        let (store, chunk) = (store.clone(), chunk.to_vec());
        writers.spawn(async move {
            for folder in chunk {
                store
                    .put(&format!("{folder}k"), b"k".to_vec())
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.unwrap();
    }
    let mut folders = folders;
    folders.sort();
    let keys: Vec<String> = folders.iter().map(|f| format!("{f}k")).collect();
    assert_eq!(listed_keys(&*store, "many/").await, keys);
    assert_eq!(store.list_folders("many/").await.unwrap(), folders);
    assert_eq!(listed_keys(&*store, "many/10").await, keys[1000..]);
    // Ranges over more keys than a page, and ranges that end within the first page.
    assert_eq!(
        ranged_keys(&*store, "many/", &keys[10], Some(&keys[1090])).await,
        keys[11..1090]
    );
    assert_eq!(
        ranged_keys(&*store, "many/", "many/", None).await,
        keys,
        "every key, over two pages"
    );
    assert_eq!(
        ranged_keys(&*store, "many/", &keys[99], Some(&keys[150])).await,
        keys[100..150]
    );
    assert_eq!(
        ranged_keys(&*store, "many/", &keys[1098], None).await,
        keys[1099..]
    );
}

/// How many writers race on one key, and how many rounds each race runs.
const RACERS: usize = 8;
const RACE_ROUNDS: usize = 20;

/// Conditional writes ([`ObjectStore::put_if`], [`ObjectStore::get_versioned`]) as the lease
/// needs them, under `cond/` (removed at the end): a create of an existing key and a replace
/// of a missing key or a stale version are refused with `PreconditionFailed`; the tokens of a
/// write and of a read agree; [`probe_conditions`] passes; and when 8 writers race on one
/// key with the same condition, exactly one wins, 20 times over for creates and for replaces.
pub async fn conditional_conformance(store: &dyn ObjectStore) {
    use currents_heap::store::{PutCondition, StoreError, probe_conditions};
    let refused = |result: Result<String, StoreError>, what: &str| match result {
        Err(e) if e.kind == StoreErrorKind::PreconditionFailed => {}
        other => panic!("{what}: expected PreconditionFailed, got {other:?}"),
    };
    let key = "cond/lease";
    let first = store
        .put_if(key, b"one".to_vec(), &PutCondition::Absent)
        .await
        .unwrap();
    refused(
        store
            .put_if(key, b"two".to_vec(), &PutCondition::Absent)
            .await,
        "a second create",
    );
    let read = store.get_versioned(key).await.unwrap();
    assert_eq!(read.bytes, b"one", "the create's bytes stay");
    assert_eq!(
        read.version, first,
        "a read names the version the write made"
    );
    let second = store
        .put_if(key, b"two".to_vec(), &PutCondition::Version(first.clone()))
        .await
        .unwrap();
    assert_ne!(second, first, "a replace makes a new version");
    refused(
        store
            .put_if(
                key,
                b"three".to_vec(),
                &PutCondition::Version(first.clone()),
            )
            .await,
        "a replace of a stale version",
    );
    refused(
        store
            .put_if(
                "cond/missing",
                b"x".to_vec(),
                &PutCondition::Version(second.clone()),
            )
            .await,
        "a replace of a missing key",
    );
    let read = store.get_versioned(key).await.unwrap();
    assert_eq!((read.bytes, read.version), (b"two".to_vec(), second));
    let missing = store.get_versioned("cond/missing").await.unwrap_err();
    assert_eq!(missing.kind, StoreErrorKind::NotFound, "{missing}");
    probe_conditions(store, "cond/probe").await.unwrap();
    conditional_races(store).await;
    store.delete(key).await.unwrap();
}

/// The races of [`conditional_conformance`]: `RACERS` writers with one condition, exactly
/// one winner whose bytes and token the key then holds, `RACE_ROUNDS` times each.
async fn conditional_races(store: &dyn ObjectStore) {
    use currents_heap::store::PutCondition;
    let race = |key: String, condition: PutCondition| async move {
        let writes = (0..RACERS).map(|i| {
            let (key, condition) = (key.clone(), condition.clone());
            async move {
                let bytes = format!("writer {i}").into_bytes();
                (bytes.clone(), store.put_if(&key, bytes, &condition).await)
            }
        });
        let outcomes = futures_util::future::join_all(writes).await;
        let mut winners = Vec::new();
        for (bytes, outcome) in outcomes {
            match outcome {
                Ok(token) => winners.push((bytes, token)),
                Err(e) if e.kind == StoreErrorKind::PreconditionFailed => {}
                Err(e) => panic!("{key}: a racing write failed otherwise: {e}"),
            }
        }
        assert_eq!(winners.len(), 1, "{key} {condition:?}: exactly one winner");
        let read = store.get_versioned(&key).await.unwrap();
        assert_eq!((read.bytes, read.version), winners.pop().unwrap());
    };
    for round in 0..RACE_ROUNDS {
        race(format!("cond/race/create-{round}"), PutCondition::Absent).await;
    }
    for round in 0..RACE_ROUNDS {
        let key = format!("cond/race/replace-{round}");
        let token = store
            .put_if(&key, b"start".to_vec(), &PutCondition::Absent)
            .await
            .unwrap();
        race(key, PutCondition::Version(token)).await;
    }
    for round in 0..RACE_ROUNDS {
        store
            .delete(&format!("cond/race/create-{round}"))
            .await
            .unwrap();
        store
            .delete(&format!("cond/race/replace-{round}"))
            .await
            .unwrap();
    }
}
