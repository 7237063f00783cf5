use zeroservices::prelude::*;

/// A number to square.
#[resource(collection = "power", text_index(description))]
pub struct Power {
    /// The number.
    pub value: i64,
    /// Its square, once computed.
    pub result: Option<i64>,
    /// Free text.
    pub description: String,
}

fn main() {
    assert_eq!(<Power as Resource>::COLLECTION, "power");
    assert_eq!(Power::text_index(), ["description"]);
    // No #[actions] block: no custom action.
    assert!(Power::actions().is_empty());

    // The doc comments become the schema's descriptions.
    let schema = Power::schema();
    assert_eq!(schema["description"], "A number to square.");
    assert_eq!(schema["properties"]["value"]["description"], "The number.");

    let info = Power::info();
    assert_eq!(info.name, "power");
    assert_eq!(info.text_index, ["description"]);

    // It is a plain struct, still.
    let power = Power {
        value: 3,
        result: None,
        description: String::new(),
    };
    assert_eq!(power.value, 3);
}
