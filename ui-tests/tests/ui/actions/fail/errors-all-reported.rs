use zeroservices::prelude::*;

#[resource(collection = "power")]
pub struct Power {
    pub value: i64,
}

// One error per broken action, all at once; the valid action still makes it into the table.
#[actions]
impl Power {
    #[action]
    fn not_async(&self) -> Result<()> {
        Ok(())
    }

    #[action]
    async fn get(&self) -> Result<()> {
        Ok(())
    }

    #[action]
    async fn fine(&self) -> Result<i64> {
        Ok(self.value)
    }
}

fn main() {
    assert_eq!(Power::actions().len(), 1);
}
