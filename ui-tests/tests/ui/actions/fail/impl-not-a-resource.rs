use zeroservices::prelude::*;

pub struct Power {
    pub value: i64,
}

#[actions]
impl Power {
    #[action]
    async fn square(&self) -> Result<i64> {
        Ok(self.value * self.value)
    }
}

fn main() {}
