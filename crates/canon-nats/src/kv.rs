//! The port's key-value buckets (S1, S2) as JetStream key-value buckets (`canonkv_<bucket>`,
//! history 1). Revisions are the bucket stream's sequences, so every write of a key gets a
//! higher one; compare-and-set is JetStream's own (`Nats-Expected-Last-Subject-Sequence`).

use async_nats::jetstream::kv::{self, CreateErrorKind, Store, UpdateErrorKind};
use async_nats::jetstream::stream::StorageType;
use canon_backend::{BackendError, KvEntry};

use crate::names::{kv_key, kv_key_dec};
use crate::{NatsBackend, nats_err};

async fn bucket(b: &NatsBackend, name: &str, create: bool) -> Result<Option<Store>, BackendError> {
    let stream = b.inner.space.kv_bucket(name);
    match b.js().ctx.get_key_value(&stream).await {
        Ok(s) => Ok(Some(s)),
        Err(_) if !create => Ok(None),
        Err(_) => b
            .js()
            .ctx
            .create_key_value(kv::Config {
                bucket: stream,
                history: 1,
                storage: StorageType::File,
                ..Default::default()
            })
            .await
            .map(Some)
            .map_err(nats_err),
    }
}

async fn revision(store: &Store, key: &str) -> Result<u64, BackendError> {
    Ok(store
        .entry(key)
        .await
        .map_err(nats_err)?
        .filter(|e| e.operation == kv::Operation::Put)
        .map_or(0, |e| e.revision))
}

pub(crate) async fn get(
    b: &NatsBackend,
    bucket_name: &str,
    key: &str,
) -> Result<Option<KvEntry>, BackendError> {
    let Some(store) = bucket(b, bucket_name, false).await? else {
        return Ok(None);
    };
    Ok(store
        .entry(kv_key(key))
        .await
        .map_err(nats_err)?
        .filter(|e| e.operation == kv::Operation::Put)
        .map(|e| KvEntry {
            value: e.value.to_vec(),
            revision: e.revision,
        }))
}

pub(crate) async fn put(
    b: &NatsBackend,
    bucket_name: &str,
    key: &str,
    value: Vec<u8>,
    expect: Option<u64>,
) -> Result<u64, BackendError> {
    let store = bucket(b, bucket_name, true)
        .await?
        .ok_or_else(|| BackendError::storage("no bucket"))?;
    let k = kv_key(key);
    match expect {
        None => store.put(&k, value.into()).await.map_err(nats_err),
        Some(0) => match store.create(&k, value.into()).await {
            Ok(r) => Ok(r),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                Err(BackendError::RevisionMismatch {
                    current: revision(&store, &k).await?,
                })
            }
            Err(e) => Err(nats_err(e)),
        },
        Some(rev) => match store.update(&k, value.into(), rev).await {
            Ok(r) => Ok(r),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                Err(BackendError::RevisionMismatch {
                    current: revision(&store, &k).await?,
                })
            }
            Err(e) => Err(nats_err(e)),
        },
    }
}

pub(crate) async fn delete(
    b: &NatsBackend,
    bucket_name: &str,
    key: &str,
    expect: Option<u64>,
) -> Result<bool, BackendError> {
    let Some(store) = bucket(b, bucket_name, false).await? else {
        return match expect {
            Some(e) if e != 0 => Err(BackendError::RevisionMismatch { current: 0 }),
            _ => Ok(false),
        };
    };
    let k = kv_key(key);
    let current = revision(&store, &k).await?;
    if let Some(e) = expect
        && e != current
    {
        return Err(BackendError::RevisionMismatch { current });
    }
    if current == 0 {
        return Ok(false);
    }
    // Expecting the revision just read: a write in between makes this fail, as S2 asks.
    store
        .purge_expect_revision(&k, Some(current))
        .await
        .map_err(|_| BackendError::RevisionMismatch { current })?;
    Ok(true)
}

pub(crate) async fn list(
    b: &NatsBackend,
    bucket_name: &str,
) -> Result<Vec<(String, KvEntry)>, BackendError> {
    let Some(_) = bucket(b, bucket_name, false).await? else {
        return Ok(Vec::new());
    };
    let stream = format!("KV_{}", b.inner.space.kv_bucket(bucket_name));
    let prefix = format!("$KV.{}.", b.inner.space.kv_bucket(bucket_name));
    let mut out = Vec::new();
    for m in b
        .js()
        .read(&stream, 1, &format!("{prefix}>"), usize::MAX)
        .await?
    {
        // Deletions and purges leave a marker with a `KV-Operation` header.
        if m.headers.get("KV-Operation").is_some() {
            continue;
        }
        let Some(key) = m.subject.strip_prefix(&prefix).and_then(kv_key_dec) else {
            continue;
        };
        out.push((
            key,
            KvEntry {
                value: m.payload.to_vec(),
                revision: m.seq,
            },
        ));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}
