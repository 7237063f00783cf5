//! Whether a typed value serialises to a given JSON value, without building that value: a
//! [`serde::Serializer`] that walks the given [`Value`] along the serialisation and stops at the
//! first difference. The owner's validation uses it to keep a document that is already in the
//! resource type's form (no second copy of it made by `serde_json::to_value`).
//!
//! It answers `true` only when `serde_json::to_value(typed)` would be equal to the value, number
//! variants and float bits included (`1` is not `1.0`, `0.0` is not `-0.0`), and the keys of
//! every object in the same order (the crate's maps keep their order: a document kept as it came
//! must read back as the type would have written it). Anything it does not follow exactly (a map
//! key that is not a string, a raw value) answers `false`, and the caller takes the slow path,
//! which is always right.

use std::fmt;
use std::iter::Peekable;

use serde::Serialize;
use serde::ser::{self, Impossible};
use serde_json::Value;
use serde_json::map::Iter;

/// Whether `serde_json::to_value(typed)` equals `value` (an error of the type's `Serialize` is
/// `false` too).
#[cfg(test)]
pub(crate) fn serializes_as<T: Serialize + ?Sized>(typed: &T, value: &Value) -> bool {
    typed.serialize(Same::new(value, None)).is_ok()
}

/// Whether `serde_json::to_value(typed)` equals `value` once the returned top-level fields are
/// added to it as `null`: the fields of a struct that `value` leaves out and the type writes as
/// `null` (an `Option` that is `None`); `None` when it differs otherwise.
pub(crate) fn serializes_as_with_nulls<T: Serialize + ?Sized>(
    typed: &T,
    value: &Value,
) -> Option<Vec<&'static str>> {
    let mut missing = Vec::new();
    typed
        .serialize(Same::new(value, Some(&mut missing)))
        .ok()
        .map(|()| missing)
}

/// The serialisation differs from the value (or is not followed here): not an error to report,
/// the answer `false`.
#[derive(Debug)]
pub(crate) struct Differs;

impl fmt::Display for Differs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the serialisation differs from the value")
    }
}

impl std::error::Error for Differs {}

impl ser::Error for Differs {
    fn custom<M: fmt::Display>(_: M) -> Self {
        Differs
    }
}

type Outcome = Result<(), Differs>;

fn check(ok: bool) -> Outcome {
    if ok { Ok(()) } else { Err(Differs) }
}

/// A scalar that `to_value` would write as `expected` (numbers, booleans, null: no allocation):
/// strictly equal to `value`, floats by their bits.
fn scalar(expected: Value, value: &Value) -> Outcome {
    match (&expected, value) {
        (Value::Number(a), Value::Number(b)) if a.is_f64() || b.is_f64() => check(
            a.is_f64()
                && b.is_f64()
                && a.as_f64().map(f64::to_bits) == b.as_f64().map(f64::to_bits),
        ),
        _ => check(expected == *value),
    }
}

/// The value of the one-entry object `{variant: ...}` (an enum variant with data).
fn variant<'a>(value: &'a Value, variant: &str) -> Result<&'a Value, Differs> {
    match value {
        Value::Object(map) if map.len() == 1 => map.get(variant).ok_or(Differs),
        _ => Err(Differs),
    }
}

/// Compares one value; at the top, `missing` collects the struct fields the value leaves out
/// and the type writes as `null`.
struct Same<'a, 'm> {
    value: &'a Value,
    missing: Option<&'m mut Vec<&'static str>>,
}

impl<'a, 'm> Same<'a, 'm> {
    fn new(value: &'a Value, missing: Option<&'m mut Vec<&'static str>>) -> Self {
        Self { value, missing }
    }
}

/// A value below the top (no field may be missing there).
#[allow(non_snake_case)]
fn Nested(value: &Value) -> Same<'_, 'static> {
    Same::new(value, None)
}

impl<'a, 'm> ser::Serializer for Same<'a, 'm> {
    type Ok = ();
    type Error = Differs;
    type SerializeSeq = Items<'a>;
    type SerializeTuple = Items<'a>;
    type SerializeTupleStruct = Items<'a>;
    type SerializeTupleVariant = Items<'a>;
    type SerializeMap = Entries<'a, 'm>;
    type SerializeStruct = Entries<'a, 'm>;
    type SerializeStructVariant = Entries<'a, 'm>;

    fn serialize_bool(self, v: bool) -> Outcome {
        check(self.value.as_bool() == Some(v))
    }
    fn serialize_i8(self, v: i8) -> Outcome {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i16(self, v: i16) -> Outcome {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i32(self, v: i32) -> Outcome {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i64(self, v: i64) -> Outcome {
        scalar(Value::from(v), self.value)
    }
    fn serialize_i128(self, v: i128) -> Outcome {
        if let Ok(v) = u64::try_from(v) {
            scalar(Value::from(v), self.value)
        } else if let Ok(v) = i64::try_from(v) {
            scalar(Value::from(v), self.value)
        } else {
            Err(Differs)
        }
    }
    fn serialize_u8(self, v: u8) -> Outcome {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u16(self, v: u16) -> Outcome {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u32(self, v: u32) -> Outcome {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u64(self, v: u64) -> Outcome {
        scalar(Value::from(v), self.value)
    }
    fn serialize_u128(self, v: u128) -> Outcome {
        u64::try_from(v).map_or(Err(Differs), |v| scalar(Value::from(v), self.value))
    }
    fn serialize_f32(self, v: f32) -> Outcome {
        scalar(Value::from(v), self.value)
    }
    fn serialize_f64(self, v: f64) -> Outcome {
        scalar(Value::from(v), self.value)
    }
    fn serialize_char(self, v: char) -> Outcome {
        let mut buf = [0u8; 4];
        self.serialize_str(v.encode_utf8(&mut buf))
    }
    fn serialize_str(self, v: &str) -> Outcome {
        check(self.value.as_str() == Some(v))
    }
    fn serialize_bytes(self, v: &[u8]) -> Outcome {
        // `to_value` writes bytes as an array of numbers.
        match self.value {
            Value::Array(items) if items.len() == v.len() => {
                for (b, item) in v.iter().zip(items) {
                    scalar(Value::from(*b), item)?;
                }
                Ok(())
            }
            _ => Err(Differs),
        }
    }
    fn serialize_none(self) -> Outcome {
        check(self.value.is_null())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Outcome {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Outcome {
        check(self.value.is_null())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Outcome {
        check(self.value.is_null())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Outcome {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Outcome {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        name: &'static str,
        value: &T,
    ) -> Outcome {
        value.serialize(Nested(variant(self.value, name)?))
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Items<'a>, Differs> {
        Items::of(self.value)
    }
    fn serialize_tuple(self, _: usize) -> Result<Items<'a>, Differs> {
        Items::of(self.value)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Items<'a>, Differs> {
        Items::of(self.value)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        name: &'static str,
        _: usize,
    ) -> Result<Items<'a>, Differs> {
        Items::of(variant(self.value, name)?)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Entries<'a, 'm>, Differs> {
        Entries::of(self.value, None)
    }
    fn serialize_struct(self, name: &'static str, _: usize) -> Result<Entries<'a, 'm>, Differs> {
        // serde_json's raw value and arbitrary-precision number are structs of a private name:
        // not followed here.
        if name.starts_with("$serde_json") {
            return Err(Differs);
        }
        Entries::of(self.value, self.missing)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        name: &'static str,
        _: usize,
    ) -> Result<Entries<'a, 'm>, Differs> {
        Entries::of(variant(self.value, name)?, None)
    }
}

/// The elements of an array, compared in order; as many as the array has.
struct Items<'a> {
    items: &'a [Value],
    next: usize,
}

impl<'a> Items<'a> {
    fn of(value: &'a Value) -> Result<Self, Differs> {
        match value {
            Value::Array(items) => Ok(Self { items, next: 0 }),
            _ => Err(Differs),
        }
    }

    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Outcome {
        let item = self.items.get(self.next).ok_or(Differs)?;
        self.next += 1;
        value.serialize(Nested(item))
    }

    fn end(self) -> Outcome {
        check(self.next == self.items.len())
    }
}

impl ser::SerializeSeq for Items<'_> {
    type Ok = ();
    type Error = Differs;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Outcome {
        self.element(value)
    }
    fn end(self) -> Outcome {
        Items::end(self)
    }
}

impl ser::SerializeTuple for Items<'_> {
    type Ok = ();
    type Error = Differs;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Outcome {
        self.element(value)
    }
    fn end(self) -> Outcome {
        Items::end(self)
    }
}

impl ser::SerializeTupleStruct for Items<'_> {
    type Ok = ();
    type Error = Differs;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Outcome {
        self.element(value)
    }
    fn end(self) -> Outcome {
        Items::end(self)
    }
}

impl ser::SerializeTupleVariant for Items<'_> {
    type Ok = ();
    type Error = Differs;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Outcome {
        self.element(value)
    }
    fn end(self) -> Outcome {
        Items::end(self)
    }
}

/// The entries of an object, in order: every written key must be its next key, and every one of
/// its keys must be written; at the top, struct fields written as `null` may be missing after
/// its last key (collected in `missing`: added at the end, they keep the type's order).
struct Entries<'a, 'm> {
    entries: Peekable<Iter<'a>>,
    /// The value of the key just written (a map's `serialize_key`).
    pending: Option<&'a Value>,
    missing: Option<&'m mut Vec<&'static str>>,
}

impl<'a, 'm> Entries<'a, 'm> {
    fn of(value: &'a Value, missing: Option<&'m mut Vec<&'static str>>) -> Result<Self, Differs> {
        match value {
            Value::Object(map) => Ok(Self {
                entries: map.iter().peekable(),
                pending: None,
                missing,
            }),
            _ => Err(Differs),
        }
    }

    /// The value of the next key when it is `key`; `None` when the object has no more keys or
    /// its next is another (a key written twice, or out of order, is then missing).
    fn take(&mut self, key: &str) -> Option<&'a Value> {
        match self.entries.peek() {
            Some((k, _)) if k.as_str() == key => self.entries.next().map(|(_, v)| v),
            _ => None,
        }
    }

    fn field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Outcome {
        match self.take(key) {
            Some(found) => {
                // A field after a missing one would be out of order once that is added.
                if self.missing.as_ref().is_some_and(|m| !m.is_empty()) {
                    return Err(Differs);
                }
                value.serialize(Nested(found))
            }
            None => {
                // Missing here, so every key of the object must have been written already.
                if self.entries.peek().is_some() {
                    return Err(Differs);
                }
                let missing = self.missing.as_mut().ok_or(Differs)?;
                value.serialize(Nested(&Value::Null))?;
                missing.push(key);
                Ok(())
            }
        }
    }

    fn end(mut self) -> Outcome {
        check(self.pending.is_none() && self.entries.next().is_none())
    }
}

impl ser::SerializeMap for Entries<'_, '_> {
    type Ok = ();
    type Error = Differs;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Outcome {
        let found = key.serialize(Key(self))?.ok_or(Differs)?;
        self.pending = Some(found);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Outcome {
        let found = self.pending.take().ok_or(Differs)?;
        value.serialize(Nested(found))
    }
    fn end(self) -> Outcome {
        Entries::end(self)
    }
}

impl ser::SerializeStruct for Entries<'_, '_> {
    type Ok = ();
    type Error = Differs;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Outcome {
        self.field(key, value)
    }
    fn end(self) -> Outcome {
        Entries::end(self)
    }
}

impl ser::SerializeStructVariant for Entries<'_, '_> {
    type Ok = ();
    type Error = Differs;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Outcome {
        self.field(key, value)
    }
    fn end(self) -> Outcome {
        Entries::end(self)
    }
}

/// A map's key: a string (or what `to_value` writes as the same string: a char, a unit variant,
/// a newtype around one) is looked up and marked; any other key is not followed.
struct Key<'e, 'a, 'm>(&'e mut Entries<'a, 'm>);

impl<'a> ser::Serializer for Key<'_, 'a, '_> {
    type Ok = Option<&'a Value>;
    type Error = Differs;
    type SerializeSeq = Impossible<Option<&'a Value>, Differs>;
    type SerializeTuple = Impossible<Option<&'a Value>, Differs>;
    type SerializeTupleStruct = Impossible<Option<&'a Value>, Differs>;
    type SerializeTupleVariant = Impossible<Option<&'a Value>, Differs>;
    type SerializeMap = Impossible<Option<&'a Value>, Differs>;
    type SerializeStruct = Impossible<Option<&'a Value>, Differs>;
    type SerializeStructVariant = Impossible<Option<&'a Value>, Differs>;

    fn serialize_str(self, v: &str) -> Result<Option<&'a Value>, Differs> {
        Ok(self.0.take(v))
    }
    fn serialize_char(self, v: char) -> Result<Option<&'a Value>, Differs> {
        let mut buf = [0u8; 4];
        Ok(self.0.take(v.encode_utf8(&mut buf)))
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<Option<&'a Value>, Differs> {
        Ok(self.0.take(variant))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<Option<&'a Value>, Differs> {
        value.serialize(self)
    }
    fn serialize_bool(self, _: bool) -> Result<Option<&'a Value>, Differs> {
        Err(Differs)
    }
    fn serialize_i8(self, _: i8) -> Result<Option<&'a Value>, Differs> {
        Err(Differs)
    }
    fn serialize_i16(self, _: i16) -> Result<Option<&'a Value>, Differs> {
        Err(Differs)
    }
    fn serialize_i32(self, _: i32) -> Result<Option<&'a Value>, Differs> {
        Err(Differs)
    }
    fn serialize_i64(self, _: i64) -> Result<Option<&'a Value>, Differs> {
        Err(Differs)
    }
    fn serialize_u8(self, _: u8) -> Result<Option<&'a Value>, Differs> {
        Err(Differs)
    }
    fn serialize_u16(self, _: u16) -> Result<Option<&'a Value>, Differs> {
        Err(Differs)
    }
    fn serialize_u32(self, _: u32) -> Result<Option<&'a Value>, Differs> {
        Err(Differs)
    }
    fn serialize_u64(self, _: u64) -> Result<Option<&'a Value>, Differs> {
        Err(Differs)
    }
    fn serialize_f32(self, _: f32) -> Result<Option<&'a Value>, Differs> {
        Err(Differs)
    }
    fn serialize_f64(self, _: f64) -> Result<Option<&'a Value>, Differs> {
        Err(Differs)
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<Option<&'a Value>, Differs> {
        Err(Differs)
    }
    fn serialize_none(self) -> Result<Option<&'a Value>, Differs> {
        Err(Differs)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<Option<&'a Value>, Differs> {
        Err(Differs)
    }
    fn serialize_unit(self) -> Result<Option<&'a Value>, Differs> {
        Err(Differs)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<Option<&'a Value>, Differs> {
        Err(Differs)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<Option<&'a Value>, Differs> {
        Err(Differs)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Differs> {
        Err(Differs)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Differs> {
        Err(Differs)
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Differs> {
        Err(Differs)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Differs> {
        Err(Differs)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Differs> {
        Err(Differs)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, Differs> {
        Err(Differs)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Differs> {
        Err(Differs)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use serde::Serialize;
    use serde_json::{Value, json};

    use super::{serializes_as, serializes_as_with_nulls};

    /// A change made to a document.
    type Change = Box<dyn Fn(&mut Value)>;

    /// A value's JSON text.
    fn text(value: &Value) -> String {
        serde_json::to_string(value).unwrap()
    }

    /// `serializes_as` must agree with `to_value` whenever it says `true`; for these plain
    /// shapes it must say `true` exactly when they are equal, as text (key order and number
    /// kinds included).
    fn agrees<T: Serialize>(typed: &T, value: &Value) -> bool {
        let same = serializes_as(typed, value);
        let normal = serde_json::to_value(typed).unwrap();
        assert_eq!(
            same,
            text(&normal) == text(value),
            "{value} against {normal}"
        );
        same
    }

    #[derive(Serialize)]
    #[serde(rename_all = "lowercase")]
    enum Colour {
        Red,
        Rgb(u8, u8, u8),
        Named { name: String },
        Wrapped(String),
    }

    #[derive(Serialize)]
    struct Doc {
        value: i64,
        result: Option<i64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        note: Option<String>,
        tags: Vec<String>,
        colours: Vec<Colour>,
        extra: BTreeMap<String, f64>,
        pair: (u8, bool),
        ch: char,
        unit: (),
    }

    fn doc() -> Doc {
        Doc {
            value: -3,
            result: None,
            note: None,
            tags: vec!["a".into(), "b".into()],
            colours: vec![
                Colour::Red,
                Colour::Rgb(1, 2, 3),
                Colour::Named { name: "x".into() },
                Colour::Wrapped("w".into()),
            ],
            extra: BTreeMap::from([("k".into(), 1.5)]),
            pair: (7, true),
            ch: 'é',
            unit: (),
        }
    }

    #[test]
    fn the_same_document_is_recognised() {
        let normal = serde_json::to_value(doc()).unwrap();
        assert!(agrees(&doc(), &normal));
        assert!(agrees(&json!(null), &json!(null)));
        assert!(agrees(&HashMap::from([("a", 1)]), &json!({"a": 1})));
    }

    #[test]
    fn every_difference_is_seen() {
        let normal = serde_json::to_value(doc()).unwrap();
        let changes: Vec<Change> = vec![
            // a field missing (an `Option` the input left out: `to_value` writes `null`)
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("result");
            }),
            // a field the type does not write
            Box::new(|v| {
                v["other"] = json!(1);
            }),
            Box::new(|v| v["note"] = json!(null)),
            // numbers: another value, another kind (float for int, int for float)
            Box::new(|v| v["value"] = json!(-4)),
            Box::new(|v| v["value"] = json!(-3.0)),
            Box::new(|v| v["extra"]["k"] = json!(2)),
            Box::new(|v| v["pair"][0] = json!(7.0)),
            // strings, arrays one shorter or longer, objects of enum variants
            Box::new(|v| v["tags"][1] = json!("c")),
            Box::new(|v| {
                v["tags"].as_array_mut().unwrap().pop();
            }),
            Box::new(|v| v["tags"].as_array_mut().unwrap().push(json!("c"))),
            Box::new(|v| v["colours"][0] = json!("blue")),
            Box::new(|v| v["colours"][1] = json!({"rgb": [1, 2]})),
            Box::new(|v| v["colours"][1] = json!({"rgb": [1, 2, 3], "x": 1})),
            Box::new(|v| v["colours"][2] = json!({"named": {"name": "x", "more": 1}})),
            Box::new(|v| v["colours"][3] = json!({"other": "w"})),
            Box::new(|v| v["ch"] = json!("e")),
            Box::new(|v| v["unit"] = json!(false)),
            Box::new(|v| v["pair"] = json!({"0": 7, "1": true})),
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut changed = normal.clone();
            change(&mut changed);
            assert!(!agrees(&doc(), &changed), "change {i}");
        }
    }

    /// At the top, a struct field the value leaves out and the type writes as `null` is
    /// named (the caller adds it); anywhere else, or written as anything but `null`, it differs.
    #[test]
    fn missing_nulls_are_named_at_the_top_only() {
        let mut normal = serde_json::to_value(doc()).unwrap();
        assert_eq!(serializes_as_with_nulls(&doc(), &normal), Some(vec![]));
        // The last field (`unit`, written as `null`) left out: named.
        normal.as_object_mut().unwrap().remove("unit");
        assert_eq!(
            serializes_as_with_nulls(&doc(), &normal),
            Some(vec!["unit"])
        );
        // `result` left out too: it comes before fields the value has, so adding it at the end
        // would change the order: a difference.
        normal.as_object_mut().unwrap().remove("result");
        assert_eq!(serializes_as_with_nulls(&doc(), &normal), None);
        #[derive(Serialize)]
        struct Tail {
            value: i64,
            a: Option<u8>,
            b: (),
        }
        let tail = Tail {
            value: 1,
            a: None,
            b: (),
        };
        assert_eq!(
            serializes_as_with_nulls(&tail, &json!({"value": 1})),
            Some(vec!["a", "b"])
        );
        assert_eq!(
            serializes_as_with_nulls(&tail, &json!({"value": 1, "a": null})),
            Some(vec!["b"])
        );
        // Not null: missing is a difference.
        let mut without_value = serde_json::to_value(doc()).unwrap();
        without_value.as_object_mut().unwrap().remove("value");
        assert_eq!(serializes_as_with_nulls(&doc(), &without_value), None);
        // Below the top: a difference.
        #[derive(Serialize)]
        struct Outer {
            inner: Inner,
        }
        #[derive(Serialize)]
        struct Inner {
            a: Option<u8>,
        }
        let outer = Outer {
            inner: Inner { a: None },
        };
        assert_eq!(
            serializes_as_with_nulls(&outer, &json!({"inner": {}})),
            None
        );
        assert_eq!(
            serializes_as_with_nulls(&outer, &json!({"inner": {"a": null}})),
            Some(vec![])
        );
        // A map's entries (not a struct's fields) may not be missing.
        let map = BTreeMap::from([("a", None::<u8>)]);
        assert_eq!(serializes_as_with_nulls(&map, &json!({})), None);
    }

    /// The crate's maps keep their keys' order: the same fields in another order are another
    /// document (it would read back in that order), and so is a missing field before a present
    /// one (it would be added after it).
    #[test]
    fn key_order_counts() {
        #[derive(Serialize)]
        struct Two {
            a: Option<u8>,
            b: u8,
        }
        let two = Two { a: None, b: 1 };
        let mut swapped = serde_json::Map::new();
        swapped.insert("b".into(), json!(1));
        swapped.insert("a".into(), json!(null));
        let swapped = Value::Object(swapped);
        if text(&swapped) == r#"{"b":1,"a":null}"# {
            // Maps keep the order of insertion (serde_json's `preserve_order`, which a
            // dependency turns on).
            assert!(!agrees(&two, &swapped));
        }
        assert!(agrees(&two, &json!({"a": null, "b": 1})));
        assert_eq!(serializes_as_with_nulls(&two, &json!({"b": 1})), None);
        let big: BTreeMap<String, u32> = (0..200).map(|i| (format!("{i:03}"), i)).collect();
        assert!(agrees(&big, &serde_json::to_value(&big).unwrap()));
    }

    #[test]
    fn floats_compare_by_their_bits() {
        assert!(serializes_as(&0.0f64, &json!(0.0)));
        assert!(!serializes_as(&-0.0f64, &json!(0.0)));
        assert!(!serializes_as(&0.0f64, &json!(-0.0)));
        // Not finite: `to_value` writes null.
        assert!(agrees(&f64::NAN, &json!(null)));
        assert!(agrees(&1.25f32, &serde_json::to_value(1.25f32).unwrap()));
        assert!(agrees(&0.1f32, &serde_json::to_value(0.1f32).unwrap()));
    }

    /// A key written twice must not stand for a key never written (`to_value` keeps the last).
    #[test]
    fn a_key_written_twice_is_not_two_keys() {
        struct Twice;
        impl Serialize for Twice {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap;
                let mut map = s.serialize_map(Some(2))?;
                map.serialize_entry("a", &1)?;
                map.serialize_entry("a", &1)?;
                map.end()
            }
        }
        assert!(!agrees(&Twice, &json!({"a": 1, "b": 1})));
        assert!(!serializes_as(&Twice, &json!({"a": 1})));
    }

    #[test]
    fn what_is_not_followed_answers_false() {
        // Integer keys (`to_value` writes them as strings): not followed.
        assert!(!serializes_as(&BTreeMap::from([(1, 2)]), &json!({"1": 2})));
        // A raw value.
        let raw = serde_json::value::to_raw_value(&json!({"a": 1})).unwrap();
        assert!(!serializes_as(&raw, &json!({"a": 1})));
        // A type whose serialisation fails.
        struct Fails;
        impl Serialize for Fails {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("no"))
            }
        }
        assert!(!serializes_as(&Fails, &json!(null)));
    }
}
