//! JSON in and out of typed values, with errors that name the offending field.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::{Error, Result};

mod same;

pub(crate) use same::serializes_as_with_nulls;

/// Deserialises `value` into `T`, naming the offending field on failure.
pub(crate) fn from_value<T: DeserializeOwned>(value: Value) -> Result<T> {
    // The plain deserialiser first (from a reference: no path bookkeeping per field); only
    // a value that fails goes through the path-tracking one, for the error's field path.
    match T::deserialize(&value) {
        Ok(typed) => Ok(typed),
        Err(_) => serde_path_to_error::deserialize(value).map_err(Error::from),
    }
}

/// Serialises `value` to JSON text (a reply sent on as is).
pub(crate) fn to_raw<T: Serialize + ?Sized>(value: &T) -> Result<Box<RawValue>> {
    serde_json::value::to_raw_value(value).map_err(|e| Error::internal(e.to_string()))
}

/// Deserialises JSON text into `T`, naming the offending field on failure.
pub(crate) fn from_raw<T: DeserializeOwned>(raw: &RawValue) -> Result<T> {
    match serde_json::from_str(raw.get()) {
        Ok(typed) => Ok(typed),
        Err(_) => {
            let mut de = serde_json::Deserializer::from_str(raw.get());
            serde_path_to_error::deserialize(&mut de).map_err(Error::from)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Power {
        value: i64,
        nested: Nested,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Nested {
        on: bool,
    }

    #[test]
    fn errors_name_the_field() {
        let bad = json!({"value": 1, "nested": {"on": 3}});
        match from_value::<Power>(bad.clone()) {
            Err(Error::Validation { path, .. }) => assert_eq!(path, "nested.on"),
            other => panic!("{other:?}"),
        }
        let raw = to_raw(&bad).unwrap();
        match from_raw::<Power>(&raw) {
            Err(Error::Validation { path, .. }) => assert_eq!(path, "nested.on"),
            other => panic!("{other:?}"),
        }
        let good = json!({"value": 1, "nested": {"on": true}});
        let typed: Power = from_raw(&to_raw(&good).unwrap()).unwrap();
        assert_eq!(typed, from_value(good).unwrap());
    }
}
