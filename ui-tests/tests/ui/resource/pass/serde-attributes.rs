// `#[serde(...)]` and `#[schemars(...)]` pass through; the user's crate has no serde dependency.
use zeroservices::prelude::*;

#[resource(collection = "task-2", text_index(r#type, long_title))]
#[serde(rename_all = "camelCase")]
pub struct Task {
    pub long_title: String,
    #[serde(default)]
    pub done: bool,
    #[serde(rename = "kind")]
    pub r#type: String,
    #[schemars(description = "Seconds spent so far.")]
    pub spent_seconds: u64,
}

fn main() {
    assert_eq!(<Task as Resource>::COLLECTION, "task-2");
    assert_eq!(Task::text_index(), ["type", "long_title"]);
    let schema = Task::schema();
    let properties = &schema["properties"];
    assert!(properties.get("longTitle").is_some(), "{schema}");
    assert!(properties.get("kind").is_some(), "{schema}");
    assert_eq!(
        properties["spentSeconds"]["description"],
        "Seconds spent so far."
    );
    // `done` has a default, so it is not required.
    let required = schema["required"].as_array().expect("required fields");
    assert!(!required.iter().any(|r| r == "done"), "{schema}");
}
