//! Shared by the tests that pull from the private test registry (`inject`, `inject_e2e`): where
//! its address, credentials and image are found. It starts nothing; `scripts/registry.sh` does.

/// The test registry's (address, user, password, image): each from the environment, else from
/// `/run/sandbox-init-test/registry.env` (written by `scripts/registry.sh`); `None` when any is
/// missing or empty.
pub fn registry_env() -> Option<[String; 4]> {
    let mut vars: std::collections::HashMap<String, String> = std::env::vars().collect();
    if let Ok(text) = std::fs::read_to_string("/run/sandbox-init-test/registry.env") {
        for line in text.lines() {
            let line = line.trim().trim_start_matches("export ");
            if let Some((k, v)) = line.split_once('=') {
                let v = v.trim_matches(|c| c == '"' || c == '\'');
                vars.entry(k.to_string()).or_insert_with(|| v.to_string());
            }
        }
    }
    let get = |k: &str| vars.get(k).filter(|v| !v.is_empty()).cloned();
    Some([
        get("SANDBOX_TEST_REGISTRY")?,
        get("SANDBOX_TEST_REGISTRY_USER")?,
        get("SANDBOX_TEST_REGISTRY_PASSWORD")?,
        get("SANDBOX_TEST_REGISTRY_IMAGE")?,
    ])
}
