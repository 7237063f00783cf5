//! [`Limits`]: what a client may send to the owner of a collection.

use std::time::Duration;

use serde_json::Value;

use crate::{Error, Result};

/// The deepest document any setting allows. `serde_json` refuses to read JSON nested deeper
/// than 128 levels, so a deeper stored document could never be read back; this ceiling keeps a
/// margin below that (the document sits inside the wire envelope and the reply).
pub(crate) const DEPTH_CEILING: usize = 100;

/// The pattern of a resource id ([`Limits::check_id`]) in JSON Schema: no `.`, `*`, `>`,
/// whitespace (Unicode `White_Space`) or control character. The OpenAPI document puts it on
/// every id, with the length (`maxLength` = [`Limits::max_id_bytes`]: JSON Schema counts
/// characters, the server bytes, so an id of multibyte characters reaches the limit sooner).
pub(crate) const ID_PATTERN: &str = "^[^.*>\\u0000-\\u0020\\u007f-\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]+$";

/// The default of [`Limits::request_memory`]: 10 minutes.
pub(crate) const DEFAULT_REQUEST_MEMORY: Duration = Duration::from_secs(600);
/// The default of [`Limits::idempotency_key_ttl`]: 24 hours.
pub(crate) const DEFAULT_IDEMPOTENCY_KEY_TTL: Duration = Duration::from_secs(24 * 3600);

/// What a client may send to the owner of a collection: the document, patch, filter, id and
/// page limits, each a setting with a default.
///
/// The owner checks every request against its node's [`Limits`] before any work that grows
/// with the input, so every store backend refuses the same way: over a size or shape limit the
/// request fails with [`Error::Limit`] (HTTP 413) naming the setting; a malformed id with
/// [`Error::BadRequest`] (400); a field the schema does not declare with
/// [`Error::Validation`] (422).
///
/// | setting | variable | default |
/// |---|---|---|
/// | [`Limits::max_depth`] | `ZS_MAX_DEPTH` | 32 |
/// | [`Limits::max_document_bytes`] | `ZS_MAX_DOCUMENT_BYTES` | 1 MiB |
/// | [`Limits::max_patch_paths`] | `ZS_MAX_PATCH_PATHS` | 256 |
/// | [`Limits::max_path_segments`] | `ZS_MAX_PATH_SEGMENTS` | 32 |
/// | [`Limits::max_filter_depth`] | `ZS_MAX_FILTER_DEPTH` | 16 |
/// | [`Limits::max_filter_clauses`] | `ZS_MAX_FILTER_CLAUSES` | 256 |
/// | [`Limits::max_id_bytes`] | `ZS_MAX_ID_BYTES` | 256 |
/// | [`Limits::max_page`] | `ZS_MAX_PAGE` | 1000 |
/// | [`Limits::request_memory`] | `ZS_REQUEST_MEMORY_MS` | 10 minutes |
/// | [`Limits::idempotency_key_ttl`] | `ZS_IDEMPOTENCY_KEY_TTL_MS` | 24 hours |
/// | [`Limits::change_log`] | `ZS_CHANGE_LOG_MAX`, `ZS_CHANGE_LOG_MS` | 100,000 entries, 24 hours |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The deepest nesting of objects and arrays in a stored document (the document itself is
    /// level 1). At most 100.
    pub max_depth: usize,
    /// The largest stored document, in bytes of its JSON text (counted without escapes).
    pub max_document_bytes: usize,
    /// The most paths one patch may touch, over all its operators.
    pub max_patch_paths: usize,
    /// The most dot-separated segments in one patch path. At most 100.
    pub max_path_segments: usize,
    /// The deepest nesting of a list filter (`where`), as JSON.
    pub max_filter_depth: usize,
    /// The most keys (fields and operators) in a list filter, at every level together.
    pub max_filter_clauses: usize,
    /// The longest resource id, in bytes (ids are also limited in what they contain: see
    /// [`Limits::check_id`]).
    pub max_id_bytes: usize,
    /// The largest page a list answers; a larger or absent `limit` is clamped to it, and the
    /// reply says that more follow.
    pub max_page: usize,
    /// How long the store remembers the reply to a mutating request (by its request id), so a
    /// retried or failed-over copy returns it instead of running again. Keep it at least twice
    /// the request timeout.
    pub request_memory: Duration,
    /// How long the reply to a request sent with an HTTP `Idempotency-Key` is remembered.
    pub idempotency_key_ttl: Duration,
    /// How long the change log of each collection keeps its entries (see
    /// [`crate::changes`]); `max_entries: 0` turns the log off.
    pub change_log: crate::changes::Retention,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_depth: 32,
            max_document_bytes: 1024 * 1024,
            max_patch_paths: 256,
            max_path_segments: 32,
            max_filter_depth: 16,
            max_filter_clauses: 256,
            max_id_bytes: 256,
            max_page: 1000,
            request_memory: DEFAULT_REQUEST_MEMORY,
            idempotency_key_ttl: DEFAULT_IDEMPOTENCY_KEY_TTL,
            change_log: crate::changes::Retention::default(),
        }
    }
}

/// One setting: its variable, how to read it, where it goes.
struct Setting {
    var: &'static str,
    min: usize,
    max: usize,
    field: fn(&mut Limits) -> &mut usize,
}

const SETTINGS: [Setting; 8] = [
    Setting {
        var: "ZS_MAX_DEPTH",
        min: 2,
        max: DEPTH_CEILING,
        field: |l| &mut l.max_depth,
    },
    Setting {
        var: "ZS_MAX_DOCUMENT_BYTES",
        min: 64,
        max: usize::MAX,
        field: |l| &mut l.max_document_bytes,
    },
    Setting {
        var: "ZS_MAX_PATCH_PATHS",
        min: 1,
        max: usize::MAX,
        field: |l| &mut l.max_patch_paths,
    },
    Setting {
        var: "ZS_MAX_PATH_SEGMENTS",
        min: 1,
        max: DEPTH_CEILING,
        field: |l| &mut l.max_path_segments,
    },
    Setting {
        var: "ZS_MAX_FILTER_DEPTH",
        min: 1,
        max: DEPTH_CEILING,
        field: |l| &mut l.max_filter_depth,
    },
    Setting {
        var: "ZS_MAX_FILTER_CLAUSES",
        min: 1,
        max: usize::MAX,
        field: |l| &mut l.max_filter_clauses,
    },
    Setting {
        var: "ZS_MAX_ID_BYTES",
        min: 1,
        max: 1024,
        field: |l| &mut l.max_id_bytes,
    },
    Setting {
        var: "ZS_MAX_PAGE",
        min: 1,
        max: 1_000_000,
        field: |l| &mut l.max_page,
    },
];

impl Limits {
    /// Reads the `ZS_MAX_*` variables (an unset or empty one keeps its default); a malformed or
    /// out-of-range value is an error that names the variable.
    ///
    /// Read through [`Settings`](crate::settings::Settings), like every `ZS_*` variable.
    pub fn from_env() -> Result<Self> {
        Ok(crate::settings::Settings::from_env()?.limits())
    }

    /// [`Limits::from_env`] over any source of variables.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        Ok(crate::settings::Settings::from_lookup(&lookup)?.limits())
    }

    /// Sets one limit by its variable's name (`"ZS_MAX_DEPTH"`), checking its range; used by
    /// the `#[service]` flags.
    pub fn set(&mut self, var: &str, value: &str) -> Result<()> {
        let setting = SETTINGS
            .iter()
            .find(|s| s.var == var)
            .ok_or_else(|| Error::bad_request(format!("{var} is not a limit")))?;
        *(setting.field)(self) = parse_setting(setting, value)?;
        Ok(())
    }

    /// The variables of every limit, in the order of the table above.
    pub fn variables() -> impl Iterator<Item = &'static str> {
        SETTINGS.iter().map(|s| s.var)
    }

    /// Checks a resource id: 1 to [`Limits::max_id_bytes`] bytes of printable UTF-8, without
    /// `.`, `*`, `>`, whitespace or control characters (ids are event-topic segments).
    pub fn check_id(&self, id: &str) -> Result<()> {
        if id.is_empty() {
            return Err(Error::bad_request("a resource id must not be empty"));
        }
        if id.len() > self.max_id_bytes {
            return Err(Error::limit(
                "ZS_MAX_ID_BYTES",
                self.max_id_bytes,
                format!("a resource id of {} bytes", id.len()),
            ));
        }
        if let Some(c) = id
            .chars()
            .find(|c| matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control())
        {
            return Err(Error::bad_request(format!(
                "a resource id must not contain {c:?} (ids are 1-{} bytes of printable UTF-8 \
                 without `.`, `*`, `>`, whitespace or control characters)",
                self.max_id_bytes
            )));
        }
        Ok(())
    }

    /// Checks a document's depth and size.
    pub fn check_document(&self, doc: &Value) -> Result<()> {
        let shape = Shape::of(doc, self.max_depth, self.max_document_bytes);
        if shape.depth > self.max_depth {
            return Err(Error::limit(
                "ZS_MAX_DEPTH",
                self.max_depth,
                "a document nested deeper than the limit",
            ));
        }
        if shape.bytes > self.max_document_bytes {
            return Err(Error::limit(
                "ZS_MAX_DOCUMENT_BYTES",
                self.max_document_bytes,
                "a document larger than the limit",
            ));
        }
        Ok(())
    }

    /// Checks a list filter's depth and number of clauses.
    pub fn check_filter(&self, filter: &Value) -> Result<()> {
        let shape = Shape::of(filter, self.max_filter_depth, usize::MAX);
        if shape.depth > self.max_filter_depth {
            return Err(Error::limit(
                "ZS_MAX_FILTER_DEPTH",
                self.max_filter_depth,
                "a filter nested deeper than the limit",
            ));
        }
        if shape.keys > self.max_filter_clauses {
            return Err(Error::limit(
                "ZS_MAX_FILTER_CLAUSES",
                self.max_filter_clauses,
                format!("a filter with {} fields and operators", shape.keys),
            ));
        }
        Ok(())
    }

    /// The page a list answers for a requested `limit` (`None` or 0: no limit asked).
    pub fn page(&self, limit: Option<u64>) -> usize {
        match limit {
            Some(n) if n > 0 => usize::try_from(n).unwrap_or(usize::MAX).min(self.max_page),
            _ => self.max_page,
        }
    }
}

fn parse_setting(setting: &Setting, value: &str) -> Result<usize> {
    parse_range(setting.var, value).map_err(|expected| {
        Error::bad_request(format!("{}={value:?}: expected {expected}", setting.var))
    })
}

/// Parses the value of the limit whose variable is `var`, checking its range; the error says
/// what was expected.
pub(crate) fn parse_range(var: &str, value: &str) -> std::result::Result<usize, String> {
    let Some(setting) = SETTINGS.iter().find(|s| s.var == var) else {
        return Err(format!("{var} is not a limit"));
    };
    value
        .trim()
        .parse::<usize>()
        .ok()
        .filter(|n| (setting.min..=setting.max).contains(n))
        .ok_or_else(|| {
            let range = if setting.max == usize::MAX {
                format!("at least {}", setting.min)
            } else {
                format!("{} to {}", setting.min, setting.max)
            };
            format!("a whole number, {range}")
        })
}

/// The depth, key count and approximate JSON size of a value, measured without recursion
/// and stopping early once the depth or the size is over the given bounds.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Shape {
    pub(crate) depth: usize,
    pub(crate) keys: usize,
    pub(crate) bytes: usize,
}

impl Shape {
    pub(crate) fn of(value: &Value, max_depth: usize, max_bytes: usize) -> Shape {
        let mut shape = Shape::default();
        let mut stack: Vec<(&Value, usize)> = vec![(value, 1)];
        while let Some((value, depth)) = stack.pop() {
            match value {
                Value::Null => shape.bytes += 4,
                Value::Bool(b) => shape.bytes += if *b { 4 } else { 5 },
                // Close enough for a bound: a number's text is at most this long.
                Value::Number(_) => shape.bytes += 8,
                Value::String(s) => shape.bytes += s.len() + 2,
                Value::Array(items) => {
                    shape.depth = shape.depth.max(depth);
                    shape.bytes += 2 + items.len();
                    stack.extend(items.iter().map(|v| (v, depth + 1)));
                }
                Value::Object(map) => {
                    shape.depth = shape.depth.max(depth);
                    shape.keys += map.len();
                    shape.bytes += 2 + map.len();
                    for (k, v) in map {
                        shape.bytes += k.len() + 3;
                        stack.push((v, depth + 1));
                    }
                }
            }
            if shape.depth > max_depth || shape.bytes > max_bytes {
                break;
            }
        }
        shape
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn nested(levels: usize) -> Value {
        let mut v = json!(1);
        for _ in 0..levels {
            v = json!({ "a": v });
        }
        v
    }

    #[test]
    fn ids() {
        let l = Limits::default();
        for good in ["42", "a-b_c", "ünï", "ABC:1/2", &"x".repeat(256)] {
            assert!(l.check_id(good).is_ok(), "{good}");
        }
        for bad in ["", "a.b", "a*", "a>", "a b", "a\tb", "a\u{0}", "\u{7f}"] {
            assert!(
                matches!(l.check_id(bad), Err(Error::BadRequest { .. })),
                "{bad:?}"
            );
        }
        let long = l.check_id(&"x".repeat(257)).unwrap_err();
        assert!(matches!(long, Error::Limit { .. }));
        assert!(long.to_string().contains("ZS_MAX_ID_BYTES"), "{long}");
    }

    #[test]
    fn depth_and_size() {
        let l = Limits::default();
        assert!(l.check_document(&nested(31)).is_ok()); // 31 objects
        assert!(l.check_document(&nested(32)).is_ok());
        let deep = l.check_document(&nested(33)).unwrap_err();
        assert!(deep.to_string().contains("ZS_MAX_DEPTH=32"), "{deep}");
        let big = json!({ "s": "x".repeat(1024 * 1024) });
        let e = l.check_document(&big).unwrap_err();
        assert!(e.to_string().contains("ZS_MAX_DOCUMENT_BYTES"), "{e}");
        // Arrays count as levels too.
        let mut v = json!(1);
        for _ in 0..40 {
            v = json!([v]);
        }
        assert!(l.check_document(&v).is_err());
    }

    #[test]
    fn very_deep_values_are_measured_without_recursion() {
        // Built and dropped iteratively: serde_json's own drop of such a value recurses.
        let mut v = json!(1);
        for _ in 0..100_000 {
            v = Value::Array(vec![v]);
        }
        let shape = Shape::of(&v, usize::MAX, usize::MAX);
        assert_eq!(shape.depth, 100_000);
        let mut cur = v;
        while let Value::Array(mut items) = cur {
            cur = items.pop().unwrap_or(Value::Null);
        }
    }

    #[test]
    fn filters() {
        let l = Limits::default();
        assert!(l.check_filter(&json!({"a": {"$gt": 1}})).is_ok());
        assert!(l.check_filter(&nested(17)).is_err());
        let wide: serde_json::Map<String, Value> =
            (0..300).map(|i| (format!("f{i}"), json!(i))).collect();
        let e = l.check_filter(&Value::Object(wide)).unwrap_err();
        assert!(e.to_string().contains("ZS_MAX_FILTER_CLAUSES"), "{e}");
    }

    #[test]
    fn pages() {
        let l = Limits::default();
        assert_eq!(l.page(None), 1000);
        assert_eq!(l.page(Some(0)), 1000);
        assert_eq!(l.page(Some(10)), 10);
        assert_eq!(l.page(Some(5000)), 1000);
        assert_eq!(l.page(Some(u64::MAX)), 1000);
    }

    #[test]
    fn settings_from_the_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert_eq!(Limits::from_lookup(env(&[])).unwrap(), Limits::default());
        let l =
            Limits::from_lookup(env(&[("ZS_MAX_DEPTH", "8"), ("ZS_MAX_PAGE", " 50 ")])).unwrap();
        assert_eq!((l.max_depth, l.max_page), (8, 50));
        for bad in [
            ("ZS_MAX_DEPTH", "101"),
            ("ZS_MAX_DEPTH", "x"),
            ("ZS_MAX_PAGE", "0"),
            ("ZS_MAX_ID_BYTES", "-1"),
        ] {
            let pairs: &'static [(&'static str, &'static str)] = Box::leak(Box::new([bad]));
            let e = Limits::from_lookup(env(pairs)).unwrap_err();
            assert!(e.to_string().contains(bad.0), "{e}");
        }
        let mut l = Limits::default();
        l.set("ZS_MAX_PATCH_PATHS", "3").unwrap();
        assert_eq!(l.max_patch_paths, 3);
        assert!(l.set("ZS_NOPE", "3").is_err());
        assert_eq!(Limits::variables().count(), 8);
    }
}
