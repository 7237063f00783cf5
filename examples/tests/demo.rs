#[test]
fn nested() {
    let cargo = std::env::var("CARGO").unwrap();
    let t = std::time::Instant::now();
    let out = std::process::Command::new(cargo).args(["build","--examples","-p","zeroservices-examples"]).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap();
    eprintln!("{:?} {:?}\n{}", t.elapsed(), out.status, String::from_utf8_lossy(&out.stderr));
}
