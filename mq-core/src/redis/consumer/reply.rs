//! Raw replies of Redis taken apart without copying.

use std::collections::HashMap;

use ::redis::Value;

fn text_of(v: Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8(b).unwrap_or_default(),
        Value::SimpleString(s) => s,
        _ => String::new(),
    }
}

/// The entries of one `XREADGROUP` reply (`[[stream, [[id, [field, value, ...]], ...]]]`),
/// moved out of the reply rather than copied as the typed replies of the redis crate do.
pub(super) fn entries_of(reply: Value) -> Vec<(String, HashMap<String, Value>)> {
    let mut out = Vec::new();
    let streams = match reply {
        Value::Array(streams) => streams,
        Value::Map(pairs) => pairs
            .into_iter()
            .map(|(k, v)| Value::Array(vec![k, v]))
            .collect(),
        _ => return out,
    };
    for stream in streams {
        let Value::Array(mut parts) = stream else {
            continue;
        };
        let Some(Value::Array(entries)) = parts.pop() else {
            continue;
        };
        for entry in entries {
            let Value::Array(mut id_fields) = entry else {
                continue;
            };
            let fields = id_fields.pop();
            let Some(id) = id_fields.pop() else {
                continue;
            };
            let mut map = HashMap::with_capacity(2);
            if let Some(Value::Array(fields)) = fields {
                let mut it = fields.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    map.insert(text_of(k), v);
                }
            }
            out.push((text_of(id), map));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn an_xreadgroup_reply_gives_its_entries_in_order() {
        let entry = |id: &str, m: &str| {
            Value::Array(vec![
                bulk(id),
                Value::Array(vec![bulk("m"), bulk(m), bulk("t"), bulk("5")]),
            ])
        };
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("stream"),
            Value::Array(vec![entry("1-0", "a"), entry("2-0", "b")]),
        ])]);
        let got = entries_of(reply);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, "1-0");
        assert_eq!(got[1].0, "2-0");
        assert_eq!(got[1].1.get("m"), Some(&bulk("b")));
        assert_eq!(got[1].1.get("t"), Some(&bulk("5")));
    }

    #[test]
    fn a_resp3_map_reply_reads_the_same() {
        let reply = Value::Map(vec![(
            bulk("stream"),
            Value::Array(vec![Value::Array(vec![
                bulk("7-0"),
                Value::Array(vec![bulk("m"), bulk("x")]),
            ])]),
        )]);
        let got = entries_of(reply);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "7-0");
    }

    #[test]
    fn an_empty_or_odd_reply_gives_nothing() {
        assert!(entries_of(Value::Nil).is_empty());
        assert!(entries_of(Value::Array(vec![bulk("odd")])).is_empty());
        // An entry deleted while pending comes back with no fields: kept, with none.
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("stream"),
            Value::Array(vec![Value::Array(vec![bulk("3-0"), Value::Nil])]),
        ])]);
        let got = entries_of(reply);
        assert_eq!(got.len(), 1);
        assert!(got[0].1.is_empty());
    }
}
