// A struct and an enum inside a resource; `#[serde(...)]` passes through, the user's own
// derives stay, and the user's crate has no serde dependency.
use zeroservices::prelude::*;

#[model]
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Pending,
    Done,
}

#[model]
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub from: i64,
    pub to: i64,
}

#[resource(collection = "task")]
pub struct Task {
    pub status: Status,
    pub window: Window,
}

fn main() {
    assert_eq!(Status::default(), Status::Pending);
    let window = Window { from: 1, to: 2 };
    assert_eq!(window.clone(), window);
    let schema = Task::schema();
    let text = schema.to_string();
    assert!(text.contains("\"pending\"") && text.contains("\"done\""), "{schema}");
    assert!(text.contains("\"from\""), "{schema}");
}
