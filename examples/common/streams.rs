//! Redis Streams plumbing shared by `redis_worker` and `redis_feed`: the consumer group, and
//! the entries out of `XREADGROUP`, `XAUTOCLAIM` and `XRANGE` replies (RESP2, parsed by hand
//! from `redis::Value` so that binary payloads and deleted entries come through as they are).

use redis::{Connection, RedisResult, Value};

/// Where the jobs are: the server, the stream and the consumer group (the flags both
/// examples take).
#[derive(clap::Args, Clone)]
pub struct Group {
    /// The Redis server
    #[arg(long, value_name = "URL", default_value = "redis://127.0.0.1:6379")]
    pub redis: String,
    /// The stream of jobs
    #[arg(long, default_value = "jobs")]
    pub stream: String,
    /// The consumer group (created, reading from the stream's start, if missing)
    #[arg(long, default_value = "workers")]
    pub group: String,
}

/// The field of a stream entry that holds the job's text.
pub const PAYLOAD: &str = "payload";

/// One stream entry.
pub struct Entry {
    /// Its id, `<ms>-<seq>`.
    pub id: String,
    pub payload: Payload,
}

/// What an entry holds.
pub enum Payload {
    /// The `payload` field (any bytes).
    Text(Vec<u8>),
    /// The entry has no `payload` field.
    Missing,
    /// The entry was deleted from the stream (`XDEL`, `XTRIM`) while it was pending.
    Deleted,
}

/// Creates `group` on `stream`, reading from the stream's first entry (and the stream, if it
/// does not exist yet). A group that already exists is left as it is.
pub fn ensure_group(con: &mut Connection, stream: &str, group: &str) -> RedisResult<()> {
    let created = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .exec(con);
    match created {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// The entries of an `XREADGROUP` reply: nil (nothing new before the block ran out), or
/// `[[stream, [entry, ...]]]` for the one stream read.
pub fn read_reply(reply: Value) -> Result<Vec<Entry>, String> {
    match reply {
        Value::Nil => Ok(Vec::new()),
        Value::Array(streams) => {
            let mut out = Vec::new();
            for stream in streams {
                let Value::Array(pair) = stream else {
                    return Err(format!("XREADGROUP: unexpected stream {stream:?}"));
                };
                let mut pair = pair.into_iter();
                let (Some(_name), Some(entries), None) = (pair.next(), pair.next(), pair.next())
                else {
                    return Err("XREADGROUP: a stream is not [name, entries]".into());
                };
                out.extend(entries_of(entries)?);
            }
            Ok(out)
        }
        other => Err(format!("XREADGROUP: unexpected reply {other:?}")),
    }
}

/// An `XAUTOCLAIM` reply: the cursor to continue from (`0-0` once the whole pending list was
/// scanned) and the entries claimed. Redis 7 adds a third element, the ids of deleted entries
/// it dropped from the pending list, which needs nothing from us.
pub fn autoclaim_reply(reply: Value) -> Result<(String, Vec<Entry>), String> {
    let Value::Array(parts) = reply else {
        return Err(format!("XAUTOCLAIM: unexpected reply {reply:?}"));
    };
    let mut parts = parts.into_iter();
    let (Some(cursor), Some(entries)) = (parts.next(), parts.next()) else {
        return Err("XAUTOCLAIM: a reply without cursor and entries".into());
    };
    let cursor = text(&cursor).ok_or("XAUTOCLAIM: the cursor is not a string")?;
    Ok((cursor, entries_of(entries)?))
}

/// `[[id, [field, value, ...] | nil], ...]`, as `XRANGE` returns it and inside the replies
/// above. An entry whose fields are nil was deleted while pending (Redis 6.2 `XAUTOCLAIM`
/// returns those as nil entries: they are skipped).
pub fn entries_of(value: Value) -> Result<Vec<Entry>, String> {
    let Value::Array(items) = value else {
        return Err(format!("expected an array of entries, got {value:?}"));
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(pair) = item else {
            continue; // a nil entry
        };
        let mut pair = pair.into_iter();
        let (Some(id), Some(fields)) = (pair.next(), pair.next()) else {
            return Err("an entry is not [id, fields]".into());
        };
        let id = text(&id).ok_or("an entry id is not a string")?;
        let payload = match fields {
            Value::Nil => Payload::Deleted,
            Value::Array(fields) => {
                let mut payload = Payload::Missing;
                let mut fields = fields.into_iter();
                while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
                    if text(&name).as_deref() == Some(PAYLOAD)
                        && let Value::BulkString(bytes) = value
                    {
                        payload = Payload::Text(bytes);
                    }
                }
                payload
            }
            other => return Err(format!("the fields of {id} are {other:?}")),
        };
        out.push(Entry { id, payload });
    }
    Ok(out)
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}
