//! The whole tree uses one rustls crypto provider (ring): aws-lc must not sneak in through a
//! dependency's default features.

#[test]
fn one_crypto_provider_for_the_whole_tree() {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock")).unwrap();
    for package in ["aws-lc-rs", "aws-lc-sys", "openssl-sys", "native-tls"] {
        assert!(
            !lock.contains(&format!("name = \"{package}\"")),
            "{package} is in Cargo.lock: a dependency enabled another TLS/crypto provider"
        );
    }
    assert!(lock.contains("name = \"ring\""));
}
