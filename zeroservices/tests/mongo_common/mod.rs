//! What the MongoDB tests share: the server they run against.

/// The URI of the MongoDB server the MongoDB tests run against (`ZS_TEST_MONGODB_URI`). These
/// tests are `#[ignore]`d (`scripts/test.sh` runs them with nx-27017); asked to run without a
/// server, `test` fails saying why.
pub(crate) fn mongodb_uri(test: &str) -> String {
    std::env::var("ZS_TEST_MONGODB_URI")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "MongoDB case `{test}` needs a MongoDB server: ZS_TEST_MONGODB_URI is not set \
                 (scripts/test.sh starts nx-27017 and sets it; or set it to a mongod, e.g. \
                 mongodb://127.0.0.1:27017/zs_test)"
            )
        })
}
