// Every form of action: the table lists them with the right kind, name, doc and schemas.
use zeroservices::ActionKind;
use zeroservices::prelude::*;

/// A number to square.
#[resource(collection = "power")]
#[derive(Debug, Clone, PartialEq)]
pub struct Power {
    pub value: i64,
    pub result: Option<i64>,
}

/// How much to add.
#[resource(collection = "step")]
pub struct Step {
    /// The increment.
    pub by: i64,
}

#[actions]
impl Power {
    /// Squares the value
    /// and stores it.
    #[action]
    async fn square(&mut self, ctx: &Context) -> Result<i64> {
        let _ = ctx.collection_name();
        let square = self.value * self.value;
        self.result = Some(square);
        Ok(square)
    }

    /// Reads the value.
    #[action]
    async fn peek(&self) -> Result<i64> {
        Ok(self.helper())
    }

    /// Adds `by` to the value.
    #[action(name = "add-step")]
    async fn add(&mut self, ctx: Context, step: Step) -> Result<Option<i64>> {
        drop(ctx);
        self.value += step.by;
        Ok(self.result)
    }

    #[action]
    async fn compare(&self, other: Step) -> Result<bool> {
        Ok(self.value == other.by)
    }

    /// Resets every power.
    #[action(collection)]
    async fn reset(ctx: &Context) -> Result<u64> {
        let _ = ctx;
        Ok(0)
    }

    #[action(collection, name = "count_all")]
    async fn count(_ctx: Context, _step: Step) -> std::result::Result<u64, Error> {
        Ok(1)
    }

    #[zeroservices::action]
    async fn copy(&self) -> Result<Self> {
        Ok(self.clone())
    }

    // Not an action: stays a plain method.
    fn helper(&self) -> i64 {
        self.value
    }
}

fn main() {
    let actions = Power::actions();
    let table: Vec<(&str, ActionKind, bool)> = actions
        .iter()
        .map(|a| (a.name, a.kind(), a.args_schema.is_some()))
        .collect();
    assert_eq!(
        table,
        [
            ("square", ActionKind::Mutate, false),
            ("peek", ActionKind::Read, false),
            ("add-step", ActionKind::Mutate, true),
            ("compare", ActionKind::Read, true),
            ("reset", ActionKind::Collection, false),
            ("count_all", ActionKind::Collection, true),
            ("copy", ActionKind::Read, false),
        ]
    );

    // Doc comments: trimmed lines joined with "\n"; none gives an empty doc.
    assert_eq!(actions[0].doc, "Squares the value\nand stores it.");
    assert_eq!(actions[3].doc, "");

    let info = Power::info();
    // The 7 custom actions, then the 3 built-in link actions every resource has.
    assert_eq!(info.actions.len(), 10);
    assert_eq!(info.actions[7].name, "add_link");
    let square = &info.actions[0];
    assert_eq!(square.kind, ActionKind::Mutate);
    assert_eq!(
        square.doc.as_deref(),
        Some("Squares the value\nand stores it.")
    );
    assert_eq!(square.args_schema, None);
    assert_eq!(square.result_schema["type"], "integer");

    let add = &info.actions[2];
    let args = add
        .args_schema
        .as_ref()
        .expect("add-step takes an argument");
    assert_eq!(args["description"], "How much to add.");
    assert_eq!(args["properties"]["by"]["description"], "The increment.");

    let copy = &info.actions[6];
    assert_eq!(copy.result_schema["title"], "Power");

    // The plain method is still there.
    let power = Power {
        value: 4,
        result: None,
    };
    assert_eq!(power.helper(), 4);
}
